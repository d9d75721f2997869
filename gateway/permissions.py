"""Permission problems said as a person can fix them: the path, who owns it, who we are,
and the command that fixes it; and files that commands run as root create under the
state directory handed to the directory's owner, so the service can still read them.

Every `edgegw` command ends a PermissionError this way (gateway/cli.py), never with a
traceback.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import stat
from collections.abc import Iterator
from pathlib import Path

SERVICE_USER = "edgegw"


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _blocker(path: Path) -> Path:
    """The first folder on the way to ``path`` that we may not enter, else ``path``."""
    parts = path.absolute().parts
    for i in range(2, len(parts)):
        folder = Path(*parts[:i])
        if folder.is_dir() and not os.access(folder, os.X_OK):
            return folder
    return path


def explain_permission(exc: PermissionError, hint: Path | None = None) -> str:
    """``PATH: permission denied for user U (PATH belongs to O:G, mode M): FIX``."""
    raw = exc.filename if exc.filename is not None else hint
    path = Path(os.fsdecode(raw)) if raw is not None else Path(".")
    me = user_name(os.geteuid())
    try:
        where = _blocker(_existing(path))
        st = where.stat()
    except OSError:
        return f"{path}: permission denied for user {me}: run as root, or as the file's owner"
    owner, group = user_name(st.st_uid), group_name(st.st_gid)
    mode = stat.S_IMODE(st.st_mode)
    shown = f"{where} belongs to {owner}:{group}, mode {mode:04o}"
    if os.geteuid() == 0:
        # root is refused: a read-only mount, an immutable file, or a security module
        return (
            f"{path}: permission denied even for root ({shown}): a read-only file system "
            "(mount), an immutable file (lsattr) or a security policy (AppArmor/SELinux) "
            "refuses it"
        )
    if owner != me:
        fix = (
            f"run it as {owner} (sudo -u {owner} edgegw ...) or with sudo"
            if owner != "root"
            else "run it with sudo"
        )
    else:
        fix = f"give yourself access: chmod u+rwX {where}"
    return f"{path}: permission denied for user {me} ({shown}): {fix}"


@contextlib.contextmanager
def state_files_keep_owner(state_dir: Path) -> Iterator[None]:
    """Run as root on a state directory that belongs to someone else (the service user):
    every file and folder created under it meanwhile is handed to the directory's owner
    and group on the way out, modes untouched, so the service can still read its own key,
    learned maps and PKI. A no-op for anyone but root."""
    if os.geteuid() != 0:
        yield
        return
    try:
        st = state_dir.stat()
    except OSError:
        yield
        return
    if st.st_uid == 0:
        yield
        return
    before = set(_root_owned(state_dir))
    try:
        yield
    finally:
        for p in _root_owned(state_dir):
            if p not in before:
                with contextlib.suppress(OSError):
                    os.lchown(p, st.st_uid, st.st_gid)


def _root_owned(top: Path) -> Iterator[Path]:
    for folder, dirs, files in os.walk(top):
        for name in (*dirs, *files):
            p = Path(folder, name)
            try:
                if p.lstat().st_uid == 0:
                    yield p
            except OSError:
                continue
