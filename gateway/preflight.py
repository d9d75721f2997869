"""What can be known about a config from the files alone, beyond its syntax: the drivers
and libraries it needs are installed, every file it names exists and can be read (CA,
client certificate and key, password file, models), each model matches its pin, and no
two tags read the same register.

``edgegw validate`` prints the findings, ``edgegw doctor`` shows them as rows, and
``edgegw run`` refuses to start on any error before it starts a task or reserves a seq:
a config that passes here does not fail later for one of these reasons.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import ssl
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from .config import Config, Sources
from .registry import PACKAGES
from .yamlsource import SourceMap

log = logging.getLogger("edgegw.preflight")

ERROR, WARNING = "error", "warning"

# protocol -> (the pyproject extra that brings its library, what it is called)
EXTRAS = {
    "opcua": ("opcua", "OPC UA (asyncua)"),
    "s7": ("s7", "Siemens S7 (python-snap7)"),
}
BUILD_INFO = Path(__file__).with_name("build_info.json")
"""Written into a built package (images/build-deb.sh): its architecture, the parts it was
built without (``left_out``: the builder's choice, ``--extras``) and the parts that have no
build for its architecture (``unavailable``), each with why."""


@dataclass(frozen=True, slots=True)
class Finding:
    level: str  # error | warning
    where: str  # file:line:col: field, or "" when it is about the config as a whole
    message: str

    def __str__(self) -> str:
        label = "warning: " if self.level == WARNING else ""
        return f"{self.where}: {label}{self.message}" if self.where else label + self.message


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


def check(cfg: Config, sources: Sources, *, service: bool = False) -> list[Finding]:
    """Every finding, errors and warnings. ``service``: run by the daemon itself, so a
    file it cannot read is an error (a person running validate may simply lack the
    rights the service user has: a warning there, and doctor checks as the service)."""
    found = [
        *check_drivers(cfg, sources),
        *check_files(cfg, sources, service),
        *check_models(cfg, sources, service),
        *check_overlaps(cfg, sources),
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
                f"{_missing(exc)}; {fix}",
            )
    if cfg.inference.models:
        try:
            importlib.import_module("inference.model")  # numpy and onnxruntime
        except ImportError as exc:
            yield Finding(
                ERROR,
                sources.where(("inference", "models")),
                f"{len(cfg.inference.models)} model(s) are bound but the inference engine "
                f"cannot be loaded: {_missing(exc)}; "
                + (
                    install_hint("inference", "ONNX inference (onnxruntime)")
                    if _absent(exc)
                    else "reinstall edgegw"
                ),
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


def _unreadable(path: Path, field: str, where: str, service: bool) -> Finding | None:
    """None when ``path`` is a readable file; else what is wrong."""
    try:
        with open(path, "rb") as f:
            f.read(1)
    except FileNotFoundError:
        return Finding(ERROR, where, f"{path} does not exist: fix {field}, or put the file there")
    except IsADirectoryError:
        return Finding(ERROR, where, f"{path} is a folder, not a file: fix {field}")
    except PermissionError:
        if service or os.geteuid() == 0:
            return Finding(
                ERROR,
                where,
                f"{path} is not readable by user {_user()}: give the service user read "
                f"access (e.g. chgrp edgegw {path}; chmod 640 {path})",
            )
        return Finding(
            WARNING,
            where,
            f"{path} is not readable by you ({_user()}), so it was not checked; the service "
            "user must be able to read it: `sudo edgegw doctor` checks it as that user",
        )
    except OSError as exc:
        return Finding(ERROR, where, f"cannot read {path}: {exc.strerror or exc}")
    return None


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
            bad = _unreadable(
                path, f"uplink.tls.{key}", sources.where(("uplink", "tls", key)), service
            )
            if bad is not None:
                ok = False
                yield bad
        if ok:
            yield from _tls_context(cfg, sources)
    if up.password_file is not None:
        where = sources.where(("uplink", "password_file"))
        bad = _unreadable(up.password_file, "uplink.password_file", where, service)
        if bad is not None:
            yield bad
        else:
            from .credentials import CredentialError, read_password

            try:
                if not read_password(up):
                    yield Finding(
                        ERROR,
                        where,
                        f"{up.password_file} is empty: put the password on its first line",
                    )
            except CredentialError as exc:
                yield Finding(ERROR, where, str(exc).removeprefix("uplink.password_file: "))
    for i, d in enumerate(cfg.devices):
        for key in ("password_file", "server_certificate"):
            path = getattr(d, key, None) if d.protocol == "opcua" else None
            if isinstance(path, Path):
                bad = _unreadable(
                    path, f"{key} of device {d.name}", sources.where(("devices", i, key)), service
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
        elif key == "ca_file":
            why = f"{t.ca_file} holds no usable CA certificate in PEM ({why})"
        else:
            why = f"{t.cert_file} / {t.key_file}: not a PEM certificate and key ({why})"
        yield Finding(ERROR, sources.where(("uplink", "tls", key)), why)
    except (OSError, ValueError) as exc:
        yield Finding(ERROR, sources.where(("uplink", "tls")), f"cannot load the TLS files: {exc}")


# -- models ----------------------------------------------------------------------------------


def check_models(cfg: Config, sources: Sources, service: bool) -> Iterator[Finding]:
    """Each bound model file is there and has the pinned SHA-256 (loading it in
    onnxruntime is doctor's and the daemon's job: it costs a second per model)."""
    for i, b in enumerate(cfg.inference.models):
        path = b.model_path(cfg.base_dir)
        where = sources.where(("inference", "models", i, "model"))
        bad = _unreadable(path, f"inference.models[{i}].model", where, service)
        if bad is not None:
            if not path.exists() and path.parent.name == "models" and path.suffix == ".onnx":
                from inference.config import SHIPPED_MODELS

                if path.parent == SHIPPED_MODELS:
                    shipped = sorted(p.stem for p in SHIPPED_MODELS.glob("*.onnx"))
                    bad = Finding(
                        ERROR,
                        where,
                        f"no shipped model {b.model!s}; shipped: {', '.join(shipped) or 'none'}",
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
                f"refuse it (if you trust this file, pin it with sha256: {actual})",
            )


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
                    f"{sources.where(('devices', i, 'tags', first.tag)).split(': ')[0]}): "
                    "a copy-paste slip or an off-by-one address?",
                )
            open_.append(s)


def service_errors(cfg: Config, sources: Sources | None, path: str | Path | None) -> list[str]:
    """The checks `edgegw validate` makes of what the files tell, as the service: the
    errors (warnings are logged). Shared by a start, a SIGHUP reload and a config push."""
    sources = sources or Sources(SourceMap(str(path or "config")), {})
    found = check(cfg, sources, service=True)
    for f in found:
        if f.level != "error":
            log.warning("%s", f)
    return [str(f) for f in errors(found)]
