"""What can be known about a config from the files alone, beyond its syntax: the drivers
and libraries it needs are installed, every file it names exists and can be read (CA,
client certificate and key, password file, models), each model matches its pin, no
two tags read the same register, and the platform's receiver takes the messages.

``edgegw validate`` prints the findings, ``edgegw doctor`` shows them as rows, and
``edgegw run`` refuses to start on any error before it starts a task or reserves a seq:
a config that passes here does not fail later for one of these reasons.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import os
import ssl
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from .config import Config, Sources
from .diskroom import outbox_room
from .permissions import (
    READ,
    SEARCH,
    WRITE,
    Account,
    CannotTell,
    deepest_existing,
    denied,
    me,
    on_read_only_fs,
    service_account,
)
from .registry import PACKAGES
from .yamlsource import SourceMap

log = logging.getLogger("edgegw.preflight")

ERROR, WARNING = "error", "warning"

# protocol -> (the pyproject extra that brings its library, what it is called)
EXTRAS = {
    "opcua": ("opcua", "OPC UA (asyncua)"),
    "s7": ("s7", "Siemens S7 (python-snap7)"),
}
# `edgegw receive`'s default --max-message-bytes (gateway.receiver.DEFAULT_MAX_MESSAGE_BYTES,
# not imported: the daemon runs these checks and does not load the receiver; a test
# keeps the two equal)
RECEIVER_MAX_MESSAGE_BYTES = 2 * 2**20
BUILD_INFO = Path(__file__).with_name("build_info.json")
"""Written into a built package (images/build-deb.sh): its architecture, the parts it was
built without (``left_out``: the builder's choice, ``--extras``) and the parts that have no
build for its architecture (``unavailable``), each with why."""


@dataclass(frozen=True, slots=True)
class Finding:
    level: str  # error | warning
    where: str  # file:line:col: field, or "" when it is about the config as a whole
    message: str  # what is wrong
    fix: str = ""  # what fixes it
    row: str = "config"  # what it is about, in a word or two: doctor's row name

    def __str__(self) -> str:
        label = "warning: " if self.level == WARNING else ""
        text = label + self.message + (f"; {self.fix}" if self.fix else "")
        return f"{self.where}: {text}" if self.where else text


@cache
def build_info() -> dict[str, Any]:
    """What the installed package was built with ({} outside a package)."""
    try:
        data = json.loads(BUILD_INFO.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def install_hint(extra: str, what: str) -> str:
    """How to get the part ``extra`` (a pyproject extra) on this installation."""
    info = build_info()
    arch = info.get("arch", "?")
    unavailable = info.get("unavailable", {})
    if extra in unavailable:  # no package for this architecture can have it
        return (
            f"{what} has no build for this architecture ({arch}): {unavailable[extra]}; "
            "use a gateway of an architecture that has it "
            f"({', '.join(info.get('full_on', ['amd64', 'arm64']))}), or remove what needs it"
        )
    if info:  # the builder chose a smaller package (images/build-deb.sh --extras)
        why = info.get("left_out", {}).get(extra, "")
        return (
            f"this edgegw package ({arch}) was built without {what}{f' ({why})' if why else ''}; "
            "install the package built with every part (images/build-deb.sh's default), "
            "or remove what needs it"
        )
    return f"install it: pip install 'edgegw[{extra}]' (in a source tree: make setup)"


def check(
    cfg: Config, sources: Sources, *, service: bool = False, account: Account | None = None
) -> list[Finding]:
    """Every finding, errors and warnings. ``service``: run by the daemon itself, so a
    file it cannot read is an error (a person running validate may simply lack the
    rights the service user has: a warning there, and doctor checks as the service).
    ``account``: whose rights the outbox's folder is judged by (default: the daemon's,
    that is ours when ``service``, else the service user's when it exists)."""
    acct = me() if service else (account or service_account())
    found = [
        *check_drivers(cfg, sources),
        *check_files(cfg, sources, service),
        *check_models(cfg, sources, service),
        *check_outbox(cfg, sources, acct, service),
        *check_overlaps(cfg, sources),
        *check_receiver(cfg, sources),
    ]
    return sorted(found, key=lambda f: f.level != ERROR)  # errors first, else as found


def errors(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.level == ERROR]


# -- drivers and libraries ------------------------------------------------------------------


def check_drivers(cfg: Config, sources: Sources) -> Iterator[Finding]:
    """Each protocol's driver module imports (it imports the protocol library); so does
    the inference engine when models are bound."""
    first: dict[str, int] = {}
    for i, d in enumerate(cfg.devices):
        first.setdefault(d.protocol, i)
    for protocol, i in first.items():
        try:
            importlib.import_module(PACKAGES[protocol] + ".driver")
        except ImportError as exc:
            extra, what = EXTRAS.get(protocol, ("", protocol))
            users = [d.name for d in cfg.devices if d.protocol == protocol]
            fix = install_hint(extra, what) if extra and _absent(exc) else "reinstall edgegw"
            yield Finding(
                ERROR,
                sources.where(("devices", i, "protocol")),
                f"protocol {protocol} (device {', '.join(users)}) cannot be used here: "
                f"{_missing(exc)}",
                fix,
                f"driver {protocol}",
            )
    if cfg.inference.models:
        try:
            importlib.import_module("inference.model")  # numpy and onnxruntime
        except ImportError as exc:
            yield Finding(
                ERROR,
                sources.where(("inference", "models")),
                f"{len(cfg.inference.models)} model(s) are bound but the inference engine "
                f"cannot be loaded: {_missing(exc)}",
                install_hint("inference", "ONNX inference (onnxruntime)")
                if _absent(exc)
                else "reinstall edgegw",
                "inference engine",
            )


def _absent(exc: ImportError) -> bool:
    return _missing(exc).endswith("is not installed")


def _missing(exc: ImportError) -> str:
    """What an ImportError means: a module that is not there, or one that is there but
    does not load (a broken install: its last line says why)."""
    name = getattr(exc, "name", None)
    if isinstance(exc, ModuleNotFoundError) and name:
        return f"the Python module {name.split('.')[0]!r} is not installed"
    if name and "halted; None in sys.modules" in str(exc):  # blocked, as if not installed
        return f"the Python module {name.split('.')[0]!r} is not installed"
    last = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"it is installed but does not load ({last[-1] if last else type(exc).__name__})"


# -- files ----------------------------------------------------------------------------------


def _unreadable(
    path: Path,
    field: str,
    sources: Sources,
    loc: tuple[str | int, ...],
    service: bool,
    row: str = "",
) -> Finding | None:
    """None when ``path`` is a readable file; else what is wrong, at ``loc``. ``row``: what
    the file is, for doctor (default: ``field``). The place is looked up only for a finding:
    looking it up parses the config again with positions (pure-Python PyYAML: a 10,000-tag
    config costs seconds and tens of MiB that the daemon would keep)."""
    try:
        with open(path, "rb") as f:
            f.read(1)
        return None
    except OSError as exc:
        level, message, fix = _why_unreadable(path, field, exc, service)
        return Finding(level, sources.where(loc), message, fix, row or field)


def _why_unreadable(path: Path, field: str, exc: OSError, service: bool) -> tuple[str, str, str]:
    """(level, what is wrong, what fixes it) for a file that could not be read."""
    if isinstance(exc, FileNotFoundError):
        return ERROR, f"{path} does not exist", f"fix {field}, or put the file there"
    if isinstance(exc, IsADirectoryError):
        return ERROR, f"{path} is a folder, not a file", f"fix {field}"
    if isinstance(exc, PermissionError):
        if service or os.geteuid() == 0:
            return (
                ERROR,
                f"{path} is not readable by user {_user()}",
                f"give the service user read access (e.g. chgrp edgegw {path}; chmod 640 {path})",
            )
        return (
            WARNING,
            f"{path} is not readable by you ({_user()}), so it was not checked",
            "the service user must be able to read it: `sudo edgegw doctor` checks it as that user",
        )
    return ERROR, f"cannot read {path}: {exc.strerror or exc}", f"fix {field}"


def _user() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def check_files(cfg: Config, sources: Sources, service: bool) -> Iterator[Finding]:
    """The uplink's TLS files and password file, each OPC UA device's password file and
    server certificate: present, readable, and what they must be."""
    up = cfg.uplink
    tls = up.tls
    ok = True
    if tls is not None:
        for key in ("ca_file", "cert_file", "key_file"):
            path = getattr(tls, key)
            if path is None:
                continue
            bad = _unreadable(path, f"uplink.tls.{key}", sources, ("uplink", "tls", key), service)
            if bad is not None:
                ok = False
                yield bad
        if ok:
            yield from _tls_context(cfg, sources)
    if up.password_file is not None:
        loc: tuple[str | int, ...] = ("uplink", "password_file")
        bad = _unreadable(up.password_file, "uplink.password_file", sources, loc, service)
        if bad is not None:
            yield bad
        else:
            from .credentials import CredentialError, read_password

            try:
                if not read_password(up):
                    yield Finding(
                        ERROR,
                        sources.where(loc),
                        f"{up.password_file} is empty",
                        "put the password on its first line",
                        "uplink.password_file",
                    )
            except CredentialError as exc:
                yield Finding(
                    ERROR,
                    sources.where(loc),
                    str(exc).removeprefix("uplink.password_file: "),
                    row="uplink.password_file",
                )
    for i, d in enumerate(cfg.devices):
        for key in ("password_file", "server_certificate"):
            path = getattr(d, key, None) if d.protocol == "opcua" else None
            if isinstance(path, Path):
                bad = _unreadable(
                    path,
                    f"{key} of device {d.name}",
                    sources,
                    ("devices", i, key),
                    service,
                    f"{key} of {d.name}",
                )
                if bad is not None:
                    yield bad


def _tls_context(cfg: Config, sources: Sources) -> Iterator[Finding]:
    """The TLS files load as the forwarder loads them (PEM, a key that fits the cert)."""
    from security.tls import client_context

    t = cfg.uplink.tls
    assert t is not None
    try:
        client_context(t.ca_file, t.cert_file, t.key_file)
    except ssl.SSLError as exc:
        key = "cert_file" if t.cert_file and "ca" not in str(exc).lower() else "ca_file"
        why = exc.reason or str(exc)
        if "KEY_VALUES_MISMATCH" in str(exc):
            why = f"the key in {t.key_file} does not belong to the certificate in {t.cert_file}"
            key = "key_file"
            fix = "put the key that was made with this certificate in uplink.tls.key_file"
        elif key == "ca_file":
            why = f"{t.ca_file} holds no usable CA certificate in PEM ({why})"
            fix = "put the CA certificate that signed the broker's certificate there (PEM)"
        else:
            why = f"{t.cert_file} / {t.key_file}: not a PEM certificate and key ({why})"
            fix = "put the client certificate and its unencrypted key there (PEM)"
        yield Finding(ERROR, sources.where(("uplink", "tls", key)), why, fix, f"uplink.tls.{key}")
    except (OSError, ValueError) as exc:
        yield Finding(
            ERROR,
            sources.where(("uplink", "tls")),
            f"cannot load the TLS files: {exc}",
            "check uplink.tls.ca_file, cert_file and key_file",
            "uplink TLS files",
        )


# -- models ----------------------------------------------------------------------------------


def check_models(cfg: Config, sources: Sources, service: bool) -> Iterator[Finding]:
    """Each bound model file is there and has the pinned SHA-256 (loading it in
    onnxruntime is doctor's and the daemon's job: it costs a second per model)."""
    for i, b in enumerate(cfg.inference.models):
        path = b.model_path(cfg.base_dir)
        loc = ("inference", "models", i, "model")
        bad = _unreadable(
            path, f"inference.models[{i}].model", sources, loc, service, f"model file {b.name}"
        )
        if bad is not None:
            if not path.exists() and path.parent.name == "models" and path.suffix == ".onnx":
                from inference.config import SHIPPED_MODELS

                if path.parent == SHIPPED_MODELS:
                    shipped = sorted(p.stem for p in SHIPPED_MODELS.glob("*.onnx"))
                    bad = Finding(
                        ERROR,
                        bad.where,
                        f"no shipped model {b.model!s}",
                        f"shipped: {', '.join(shipped) or 'none'}",
                        f"model file {b.name}",
                    )
            yield bad
            continue
        try:
            actual = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            continue  # reported above
        if actual != b.sha256:
            yield Finding(
                ERROR,
                sources.where(("inference", "models", i, "sha256")),
                f"model {b.name!r}: {path} has sha256 {actual} but the config pins "
                f"{b.sha256}: the file was changed or the pin is wrong, so the daemon would "
                "refuse it",
                f"put the pinned file back, or, if you trust this file, pin it with sha256: "
                f"{actual}",
                f"model file {b.name}",
            )


# -- the outbox's place ----------------------------------------------------------------------

OUTBOX_ROW = "outbox path"
OUTBOX_SIDE_FILES = ("-wal", "-shm", ".ballast")  # SQLite's journal and shared memory, room.py


def check_outbox(cfg: Config, sources: Sources, acct: Account, service: bool) -> Iterator[Finding]:
    """The outbox file can be made and written where the config puts it, by the user the
    daemon runs as (``acct``): no file where a folder must be, its folder there or one
    it may create, writable, and the outbox and its side files (journal, shared memory,
    the disk reserve) readable and writable. Else the daemon would fail at its first
    write with "Not a directory" or "Permission denied", in a restart loop."""
    path = cfg.outbox_path
    state = cfg.state_dir
    field = "outbox.path" if "path" in cfg.outbox.model_fields_set else "gateway.state_dir"
    loc = ("outbox", "path") if field == "outbox.path" else ("gateway", "state_dir")
    in_state = path.parent == state or state in path.parent.parents

    def finding(message: str, fix: str, level: str = ERROR) -> Finding:
        # the place only for a finding (looking it up parses the config again)
        return Finding(level, sources.where(loc), message, fix, OUTBOX_ROW)

    is_dir = False
    # A file where a folder must be ("Not a directory" at the first write)
    for i in range(1, len(path.parts)):
        part = Path(*path.parts[:i])
        try:
            st = part.stat()
        except OSError:  # not there (made at start), or not ours to see: judged below
            break
        if not stat.S_ISDIR(st.st_mode):
            yield finding(
                f"{part} is a file, not a folder, so the outbox {path} cannot be made there",
                f"fix {field}, or move {part} away",
            )
            return
    with contextlib.suppress(OSError):  # not there, or not ours to see: judged below
        is_dir = stat.S_ISDIR(path.stat().st_mode)
    if is_dir:
        yield finding(
            f"the outbox {path} is a folder, not a file",
            f"{field} names the outbox file itself (e.g. outbox.db): fix it, or move the "
            "folder away",
        )
        return
    # The folder: written by SQLite (the outbox, its -wal and -shm) and the disk reserve;
    # made at start (with its parents) when missing.
    folder = path.parent
    base = deepest_existing(folder)
    own = f"sudo chown -R {acct.spec} {state}" if in_state else f"sudo chown {acct.spec} {folder}"
    who = "you" if acct.is_me else f"user {acct.name} (the daemon)"
    try:
        why = denied(base, acct, WRITE | SEARCH)
    except CannotTell as exc:
        yield finding(
            f"could not check that {who} may write {folder}: you may not look into {exc}",
            "`sudo edgegw doctor` checks it as the service user",
            WARNING,
        )
        return
    if why is not None:
        if base != folder:
            # A state directory that is not there yet (a laptop, a gateway before its
            # first start: the packaged unit makes it) is the daemon's to make: a warning
            # here, an error only when the daemon itself finds it so.
            later = not service and in_state and not state.exists()
            make = state if in_state and not state.exists() else folder
            fix = (
                own
                if in_state and state.exists()
                else f"sudo install -d -o {acct.name} -g {acct.group} -m 750 {make}"
            )
            yield finding(
                f"{folder} does not exist and {who} may not create it: {why}",
                fix
                + (
                    " (the packaged unit makes /var/lib/edgegw at its first start)"
                    if later
                    else f", or fix {field}"
                ),
                WARNING if later else ERROR,
            )
        elif on_read_only_fs(base):
            yield finding(
                f"the outbox's folder {folder}: {why}",
                f"remount it read-write, or put {field} on a writable disk",
            )
        else:
            yield finding(f"the outbox's folder {folder}: {who} {why}", own)
        return
    # The files, when they exist: read and written in place
    for p in (path, *(path.with_name(path.name + s) for s in OUTBOX_SIDE_FILES)):
        try:
            st = p.lstat()
        except FileNotFoundError:
            continue
        except OSError:
            break  # the folder was judged above; nothing more to see
        if not stat.S_ISREG(st.st_mode):
            yield finding(f"{p} is not a regular file", f"move {p} away")
            continue
        try:
            why = denied(p, acct, READ | WRITE)
        except CannotTell:
            continue
        if why is not None:
            yield finding(f"{p}: {who} {why}", own)


def check_room(cfg: Config, sources: Sources) -> list[Finding]:
    """outbox.min_free_mib against the filesystem that holds the outbox (diskroom.py):
    a reserve of half of it or more would refuse every window. Not part of ``check``: the
    daemon starts anyway, keeping a tenth of the filesystem free instead (and says so)."""
    problem = outbox_room(cfg.outbox_path, cfg.outbox.min_free_mib).problem()
    if problem is None:
        return []
    message, _, fix = problem.removeprefix("outbox.min_free_mib: ").partition("; ")
    return [Finding(ERROR, sources.where(("outbox", "min_free_mib")), message, fix, "outbox disk")]


# -- overlapping tags --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Span:
    space: tuple[Any, ...]  # what the addresses count in: (table,) or (area, db)
    start: int
    end: int  # exclusive
    bit: int | None  # a single bit inside [start, end)
    text: str  # how the span is written, for the message
    tag: int  # index in the device's tags


def _modbus_spans(dev: Any) -> list[_Span]:
    out = []
    for j, t in enumerate(dev.tags):
        n = t.registers
        unit = "register" if t.table.value in ("holding", "input") else "bit"
        rng = f"{t.address}" if n == 1 else f"{t.address}..{t.address + n - 1}"
        text = f"{t.table.value} {unit}{'s' if n > 1 else ''} {rng}"
        if t.bit is not None:
            text += f" bit {t.bit}"
        out.append(_Span((t.table,), t.address, t.address + n, t.bit, text, j))
    return out


def _s7_spans(dev: Any) -> list[_Span]:
    out = []
    for j, t in enumerate(dev.tags):
        loc = t.location
        n = max(1, t.size)
        bit = loc.bit if loc.letter == "X" else None
        out.append(_Span((loc.area, loc.db), loc.byte, loc.byte + n, bit, str(loc), j))
    return out


def _opcua_spans(dev: Any) -> list[_Span]:
    keys: dict[tuple[str, Any], int] = {}
    out = []
    for j, t in enumerate(dev.tags):
        k = (t.node, getattr(t, "index", None))
        n = keys.setdefault(k, len(keys))
        text = f"node {t.node}" + (f" [{k[1]}]" if k[1] is not None else "")
        out.append(_Span(("node",), n, n + 1, None, text, j))
    return out


SPANS = {
    "modbus_tcp": _modbus_spans,
    "modbus_rtu": _modbus_spans,
    "modbus_rtu_tcp": _modbus_spans,
    "s7": _s7_spans,
    "opcua": _opcua_spans,
}


def _clash(a: _Span, b: _Span) -> bool:
    """Whether two tags read the same data. A bit tag inside a whole-word tag is the
    usual way to name a status word's bits, so that is no clash; the same bit twice is."""
    if a.space != b.space or a.start >= b.end or b.start >= a.end:
        return False
    if a.bit is not None or b.bit is not None:
        return a.bit == b.bit and (a.start, a.end) == (b.start, b.end)
    return True


def check_receiver(cfg: Config, sources: Sources) -> Iterator[Finding]:
    """Messages up to uplink.max_message_bytes must pass the receiver's size check."""
    n = cfg.uplink.max_message_bytes
    if n > RECEIVER_MAX_MESSAGE_BYTES:
        yield Finding(
            WARNING,
            sources.where(("uplink", "max_message_bytes")),
            f"{n} bytes is more than `edgegw receive` takes by default "
            f"({RECEIVER_MAX_MESSAGE_BYTES}): it rejects larger messages unread (OVERSIZE); "
            f"start the receivers with `edgegw receive --max-message-bytes {n}`, or lower "
            "uplink.max_message_bytes",
        )


def check_overlaps(cfg: Config, sources: Sources) -> Iterator[Finding]:
    """Two tags of one device on the same or overlapping registers (or bytes, or
    nodes): allowed, but usually a copy-paste slip or an off-by-one address."""
    for i, dev in enumerate(cfg.devices):
        spans = sorted(SPANS[dev.protocol](dev), key=lambda s: (repr(s.space), s.start, s.tag))
        open_: list[_Span] = []
        for s in spans:
            open_ = [o for o in open_ if o.space == s.space and o.end > s.start]
            for o in open_:
                if not _clash(o, s):
                    continue
                first, later = sorted((o, s), key=lambda x: x.tag)
                same = (first.start, first.end, first.bit) == (later.start, later.end, later.bit)
                t1, t2 = dev.tags[first.tag].name, dev.tags[later.tag].name
                how = "the same data as" if same else f"{later.text}, overlapping"
                yield Finding(
                    WARNING,
                    sources.where(("devices", i, "tags", later.tag)),
                    f"device {dev.name}: tag {t2!r} reads {how} tag {t1!r} ({first.text}, at "
                    f"{sources.where(('devices', i, 'tags', first.tag)).split(': ')[0]})",
                    "check both addresses against the device's map: a copy-paste slip or an "
                    "off-by-one address?",
                    f"tags of {dev.name}",
                )
            open_.append(s)


def service_errors(cfg: Config, sources: Sources | None, path: str | Path | None) -> list[str]:
    """The checks `edgegw validate` makes of what the files tell, as the service: the
    errors (warnings are logged). Shared by a start, a SIGHUP reload and a config push."""
    bad, warnings = service_findings(cfg, sources, path)
    for w in warnings:
        log.warning("%s", w)
    return bad


def service_findings(
    cfg: Config, sources: Sources | None, path: str | Path | None
) -> tuple[list[str], list[str]]:
    """:func:`service_errors`' errors and warnings, as lines (for gateway/configload.py,
    whose parent logs the warnings)."""
    # First with places unknown (file and field only): looking a place up parses the file
    # again with positions, which for a 10,000-tag config costs seconds and tens of MiB
    # that the daemon would keep. Only when there is something to say, again with places.
    name = sources.smap.file if sources is not None else str(path or "config")
    found = check(cfg, Sources(SourceMap(name), {}), service=True)
    if found and sources is not None:
        found = check(cfg, sources, service=True)
    return [str(f) for f in errors(found)], [str(f) for f in found if f.level != "error"]
