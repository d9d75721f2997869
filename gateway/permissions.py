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
from dataclasses import dataclass
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


def _blocker(path: Path) -> tuple[Path, os.stat_result] | None:
    """Where access to ``path`` stops: the first folder on the way that we may not
    enter, else the deepest part that exists (the file itself, when it does)."""
    parts = path.absolute().parts
    found: tuple[Path, os.stat_result] | None = None
    for i in range(1, len(parts) + 1):
        here = Path(*parts[:i])
        try:
            st = here.stat()
        except OSError:
            break
        found = (here, st)
        if i < len(parts) and stat.S_ISDIR(st.st_mode) and not os.access(here, os.X_OK):
            break
    return found


def explain_permission(
    exc: PermissionError,
    hint: Path | None = None,
    *,
    service_dir: Path | None = None,
    daemon: bool = False,
) -> str:
    """``PATH: permission denied for user U (WHERE belongs to O:G, mode M): FIX``.
    ``service_dir``: the state directory of a daemon run as this user, whose fix is to
    give the directory to the user rather than to run as someone else; ``daemon``: the
    same for the place where access stops."""
    raw = exc.filename if exc.filename is not None else hint
    path = Path(os.fsdecode(raw)) if raw is not None else Path(".")
    me = user_name(os.geteuid())
    found = _blocker(path)
    if found is None:
        return f"{path}: permission denied for user {me}: run it with sudo"
    where, st = found
    owner, group = user_name(st.st_uid), group_name(st.st_gid)
    shown = f"{where} belongs to {owner}:{group}, mode {stat.S_IMODE(st.st_mode):04o}"
    if os.geteuid() == 0:
        # root is refused: a read-only mount, an immutable file, or a security module
        return (
            f"{path}: permission denied even for root ({shown}): a read-only file system "
            "(mount), an immutable file (lsattr) or a security policy (AppArmor/SELinux) "
            "refuses it"
        )
    if daemon and service_dir is None:
        service_dir = where
    if service_dir is not None:
        mine = f"{me}:{group_name(os.getegid())}"
        fix = f"the daemon runs as {me}: sudo chown -R {mine} {service_dir}"
    elif st.st_uid == os.geteuid():
        fix = f"give yourself access: chmod u+rwX {where}"
    elif owner == "root":
        fix = "run it with sudo"
    else:
        fix = (
            f"run it as {owner} (sudo -u {owner} edgegw ...) or with sudo; to read only, "
            f"join group {group} (sudo usermod -aG {group} {me}, then log in again)"
        )
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


# -- judging access as another user (the service user) ------------------------------------

READ, WRITE, SEARCH = 4, 2, 1


@dataclass(frozen=True, slots=True)
class Account:
    """A user the daemon runs as: its ids and the groups it is in."""

    name: str
    uid: int
    gid: int
    gids: frozenset[int]

    @property
    def group(self) -> str:
        return group_name(self.gid)

    @property
    def spec(self) -> str:
        """``user:group``, as chown takes it."""
        return f"{self.name}:{self.group}"

    @property
    def is_me(self) -> bool:
        return self.uid == os.geteuid()


def service_account(user: str = SERVICE_USER) -> Account:
    """The account the daemon runs as: the service user when it exists (the package makes
    it), else whoever runs this (a source tree, `edgegw run` by hand)."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return me()
    gids = {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if pw.pw_name in g.gr_mem}
    return Account(pw.pw_name, pw.pw_uid, pw.pw_gid, frozenset(gids))


def me() -> Account:
    uid, gid = os.geteuid(), os.getegid()
    return Account(user_name(uid), uid, gid, frozenset({gid, *os.getgroups()}))


class CannotTell(Exception):
    """We may not look at a path, so we cannot judge another user's access to it."""


def _may(st: os.stat_result, acct: Account, bits: int) -> bool:
    if acct.uid == 0:
        return True
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid == acct.uid:
        return (mode >> 6) & bits == bits
    if st.st_gid in acct.gids:
        return (mode >> 3) & bits == bits
    return mode & bits == bits


def _shown(path: Path, st: os.stat_result) -> str:
    owner = f"{user_name(st.st_uid)}:{group_name(st.st_gid)}"
    return f"{path} ({owner}, mode {stat.S_IMODE(st.st_mode):04o})"


def denied(path: Path, acct: Account, bits: int) -> str | None:
    """Why ``acct`` may not ``bits`` (READ, WRITE, SEARCH, or'ed) ``path``, which exists:
    the folder on the way it may not enter, the path itself with its owner and mode, or a
    read-only file system; None when it may. Judged by the mode bits (and, for ourselves,
    by the kernel). Raises CannotTell when we may not look."""
    path = path.absolute()
    parts = path.parts
    for i in range(1, len(parts)):
        folder = Path(*parts[:i])
        try:
            st = folder.stat()
        except PermissionError:
            raise CannotTell(str(folder)) from None
        if not _may(st, acct, SEARCH):
            return f"may not enter folder {_shown(folder, st)}"
    try:
        st = path.stat()
    except PermissionError:
        raise CannotTell(str(path)) from None
    if bits & WRITE and on_read_only_fs(path):
        return f"{path} is on a file system mounted read-only (findmnt -T {path})"
    if acct.is_me:  # the kernel knows best (ACLs, capabilities)
        amode = (os.R_OK if bits & READ else 0) | (os.W_OK if bits & WRITE else 0)
        ok = os.access(path, amode | (os.X_OK if bits & SEARCH else 0), effective_ids=True)
    else:
        ok = _may(st, acct, bits)
    if ok:
        return None
    verb = {READ: "read", WRITE: "write", READ | WRITE: "read and write"}.get(
        bits & (READ | WRITE), "enter"
    )
    return f"may not {verb} {_shown(path, st)}"


def on_read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def deepest_existing(path: Path) -> Path:
    """``path`` or the nearest folder above it that exists (as far as we may look: a
    folder we may not enter ends the search there)."""
    parts = path.absolute().parts
    found = Path(parts[0])
    for i in range(2, len(parts) + 1):
        here = Path(*parts[:i])
        try:
            here.stat()
        except OSError:
            break
        found = here
    return found
