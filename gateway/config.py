"""The gateway's YAML config: typed models, and errors that name file, line and field.

Everything is checked at load time, before anything connects (``edgegw validate`` and
``edgegw run`` share this one code path). Relative paths in the file are taken
relative to the file's own folder, so a config means the same wherever it is run from.

``devices_dir`` (e.g. ``devices.d``) adds the devices of every ``*.yaml``/``*.yml`` file
in that folder, in name order, after the config's own ``devices`` (what
``edgegw import-csv`` writes is such a file). Each file holds ``devices:`` (a list) or a
bare list; an error in one names that file, its line and column.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from drivers.modbus.config import ModbusRtuDevice, ModbusRtuTcpDevice, ModbusTcpDevice
from drivers.modbus.links import check_shared_links
from drivers.opcua.config import OpcuaDevice, resolve_paths
from drivers.s7.config import DeviceConfig as S7Device
from inference.config import InferenceConfig

from .plainconfig import CommandsDerived, ConfigDerived, ConfigError
from .yamlsource import SourceMap, YamlError, load_yaml

ID_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsConfig(_Model):
    ca_file: Path | None = Field(
        None, description="CA bundle to verify the broker; the system trust store when empty"
    )
    cert_file: Path | None = Field(None, description="client certificate for mutual TLS")
    key_file: Path | None = Field(None, description="client private key for mutual TLS")

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError(
                "cert_file and key_file go together: give both for mutual TLS, or neither"
            )
        return self


class UplinkConfig(_Model):
    host: str = Field("::1", description="broker: IPv6 literal, IPv4 literal or host name")
    port: int = Field(
        1883, ge=1, le=65535, description="broker port: 1883 plain MQTT, usually 8883 with TLS"
    )
    topic_prefix: str = Field("edgegw", description="messages go to <prefix>/<gateway id>/<kind>")
    client_id: str | None = Field(None, description="MQTT client id; default edgegw-<gateway id>")
    keepalive_s: int = Field(
        30, ge=5, le=3600, description="MQTT keep-alive: a silent link is noticed within 1.5x this"
    )
    max_inflight: int = Field(
        64, ge=1, le=65535, description="messages published but not yet acknowledged (PUBACK)"
    )
    reconnect_max_s: float = Field(
        10, ge=1, le=600, description="longest wait between reconnect attempts (with jitter)"
    )
    max_bytes_per_s: int | None = Field(
        None, ge=1024, description="cap on upstream bytes/s (cellular links); none by default"
    )
    tls: TlsConfig | None = Field(
        None,
        description="TLS to the broker (`tls: {}`: verified against the system's CA store); "
        "none: plain MQTT",
    )
    protocol: Literal["mqtt5", "mqtt311"] = Field(
        "mqtt5",
        description="mqtt5: reason codes and the broker's limits (CONNACK properties); "
        "mqtt311: for brokers that speak only MQTT 3.1.1 (same delivery guarantees)",
    )
    username: str | None = Field(
        None,
        min_length=1,
        description="MQTT user name (an access token where the platform logs in with one)",
    )
    password_file: Path | None = Field(
        None, description="file holding the MQTT password (one line), readable only by edgegw"
    )
    password_env: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="... or the name of an environment variable that holds it",
    )
    password_credential: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="... or the name of a systemd credential (LoadCredential=) that holds it",
    )
    max_message_bytes: int = Field(
        256 * 1024,
        ge=4096,
        le=256 * 2**20,
        description="largest message sealed; lowered at run time to the broker's Maximum "
        "Packet Size when it announces a smaller one",
    )

    password: Any = Field(
        None, exclude=True, description="not accepted: the config is world-readable"
    )

    @field_validator("password")
    @classmethod
    def _no_inline_password(cls, v: Any) -> None:
        if v is not None:
            raise ValueError(
                "an inline password is not accepted (the config is world-readable): put it "
                "in a file only edgegw can read and name it in uplink.password_file, or use "
                "password_env / password_credential"
            )
        return None

    @model_validator(mode="after")
    def _credentials(self) -> UplinkConfig:
        sources = [
            k for k in ("password_file", "password_env", "password_credential") if getattr(self, k)
        ]
        if len(sources) > 1:
            raise ValueError(
                f"give the password one way, not {len(sources)} ({', '.join(sources)})"
            )
        if sources and self.username is None:
            raise ValueError(
                f"{sources[0]} is set but username is not: MQTT sends a password only "
                "with a user name"
            )
        return self

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        v = v.strip()
        if v.startswith("[") and v.endswith("]"):
            v = v[1:-1]  # accept the URL form [::1]
        if not v:
            raise ValueError("host is empty: give a broker address such as '::1' or 'broker.plant'")
        try:
            ipaddress.ip_address(v)
        except ValueError:
            if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?", v):
                raise ValueError(f"{v!r} is neither an IP address nor a host name") from None
        return v

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v or any(c in v for c in "+#\0") or v.startswith("/") or v.endswith("/"):
            raise ValueError(
                f"{v!r} is not a usable topic prefix: no '+', '#', and no leading or trailing '/'"
            )
        return v


class OutboxConfig(_Model):
    path: Path = Field(
        Path("outbox.db"),
        description="the outbox file; relative to state_dir (e.g. on its own partition)",
    )
    max_mib: float = Field(
        1024, gt=0, description="cap on the unsent messages' size, MiB; then `when_full` applies"
    )
    when_full: Literal["drop_oldest", "stop_acquisition"] = Field(
        "drop_oldest",
        description="drop_oldest: evict the oldest telemetry to keep the newest; "
        "stop_acquisition: keep the oldest and refuse new data. Either way every lost "
        "point is counted, in metrics and in a signed notice to the platform",
    )
    min_free_mib: float = Field(
        64, ge=0, description="free disk to leave for the system; below it the outbox is full"
    )


class GatewaySection(_Model):
    id: str = Field(pattern=ID_RE, description="this gateway's id, unique on the platform")
    state_dir: Path = Field(
        Path("/var/lib/edgegw"), description="keys, outbox and status live here"
    )
    flush_window_ms: int = Field(
        250,
        ge=1,
        le=60_000,
        description="batches are collected this long, then sealed as one message",
    )
    max_batch_points: int = Field(
        10_000, ge=1, le=1_000_000, description="seal early once a window holds this many points"
    )
    durability: Literal["NORMAL", "FULL"] = Field(
        "NORMAL",
        description="SQLite synchronous mode of the outbox: NORMAL survives a crash of the "
        "process; FULL also survives power loss, at more flash writes",
    )
    shutdown_drain_s: float = Field(
        10.0, ge=0, le=3600, description="on stop, keep sending the backlog this long"
    )
    payload_version: Literal[1, 2] = Field(
        2,
        description="payload format sent (docs/wire-format.md): 2 names each tag once per "
        "message (about 4x fewer bytes); 1 for a platform whose receiver reads only version 1",
    )


Device = Annotated[
    ModbusTcpDevice | ModbusRtuDevice | ModbusRtuTcpDevice | OpcuaDevice | S7Device,
    Field(discriminator="protocol"),
]


class MetricsConfig(_Model):
    enabled: bool = Field(True, description="serve /metrics, /livez, /readyz and /healthz")
    host: str = Field("127.0.0.1", description="bind address; expose beyond localhost on purpose")
    port: int = Field(9810, ge=0, le=65535, description="HTTP port (0: any free port)")


class AuditConfig(_Model):
    checkpoint_every: int = Field(100, ge=1, description="seal a signed checkpoint every N records")
    checkpoint_interval_s: float = Field(300, gt=0, description="... or every T seconds")
    segment_mib: float = Field(
        8,
        gt=0,
        le=1024,
        description="the log goes on in a new file (segment) at the first checkpoint after "
        "the live one passes this size, MiB",
    )
    archive: Literal["keep", "move", "delete"] = Field(
        "keep",
        description="segments whose last checkpoint the platform has acknowledged: keep: "
        "left in state_dir; move: moved to archive_dir; delete: removed (the platform "
        "holds the copy). Each move or delete is an audit record with the segment's SHA-256",
    )
    archive_dir: Path = Field(
        Path("audit-archive"),
        description="where `move` puts segments, in a folder per log id; relative to state_dir",
    )


COMMAND_OPERATIONS = ("write", "config")


class CommandKey(_Model):
    """A platform key trusted to sign commands, and what it may do."""

    name: str = Field(
        pattern=ID_RE, description="a name for this key in results, logs and the audit log"
    )
    public_key: Path = Field(
        description="its Ed25519 public key (PEM), e.g. from `edgegw keys command-key`; "
        "relative to the config file"
    )
    operations: list[Literal["write", "config"]] = Field(
        min_length=1,
        description="write: set tags that have a write block; config: replace the whole "
        "config (which includes these keys: an administrator's key)",
    )
    tags: list[str] = Field(
        default_factory=list,
        description="for write: the tags this key may write, as '<device>/<tag>' patterns "
        "('boiler/*', '*/setpoint'); a tag must also have a write block",
    )

    @field_validator("public_key")
    @classmethod
    def _key_file(cls, v: Path) -> Path:
        from security import KeyFileError, load_public_key

        try:
            load_public_key(v)
        except KeyFileError as exc:
            raise ValueError(str(exc)) from None
        return v

    @model_validator(mode="after")
    def _scope(self) -> CommandKey:
        if len(set(self.operations)) != len(self.operations):
            raise ValueError("operations: each operation once")
        if "write" in self.operations and not self.tags:
            raise ValueError(
                "a key with operation 'write' needs tags: the '<device>/<tag>' patterns it "
                "may write (e.g. ['boiler/setpoint'] or ['boiler/*'])"
            )
        if "write" not in self.operations and self.tags:
            raise ValueError("tags apply to operation 'write', which this key does not have")
        return self


class CommandsConfig(CommandsDerived, _Model):
    """Signed commands from the platform (see the README's "Commands" section)."""

    keys: list[CommandKey] = Field(
        default_factory=list,
        description="platform keys trusted to sign commands; none: the gateway takes no "
        "commands (and does not subscribe to its command topic)",
    )
    max_clock_skew_s: float = Field(
        60, ge=0, le=3600, description="a command issued this far in our future is accepted"
    )
    max_lifetime_s: float = Field(
        3600,
        gt=0,
        le=7 * 86400,
        description="a command valid for longer than this (expires-at minus issued-at) is refused",
    )
    config_health_s: float = Field(
        30,
        gt=0,
        le=3600,
        description="after a config push, how long health is watched before it is kept "
        "(else the previous config comes back)",
    )
    max_message_bytes: int = Field(
        1024 * 1024, ge=4096, le=16 * 2**20, description="larger command messages are refused"
    )
    session_expiry_s: int = Field(
        7 * 86400,
        ge=60,
        le=2**32 - 1,
        description="how long the broker keeps our session, and commands sent while the "
        "link is down (MQTT 5 Session Expiry Interval)",
    )

    @model_validator(mode="after")
    def _unique(self) -> CommandsConfig:
        names = [k.name for k in self.keys]
        if len(set(names)) != len(names):
            raise ValueError("keys: every key needs its own name")
        files = [k.public_key.resolve() for k in self.keys]
        if len(set(files)) != len(files):
            raise ValueError("keys: a public key file is listed twice")
        return self


class Config(ConfigDerived, _Model):
    gateway: GatewaySection = Field(description="this gateway: its id and where its state lives")
    uplink: UplinkConfig = Field(
        UplinkConfig(), description="the MQTT broker the signed messages go to"
    )
    outbox: OutboxConfig = Field(
        OutboxConfig(), description="the SQLite outbox that keeps every message until acknowledged"
    )
    inference: InferenceConfig = Field(
        InferenceConfig(), description="ONNX anomaly models on the live data (needs onnxruntime)"
    )
    metrics: MetricsConfig = Field(
        MetricsConfig(), description="the Prometheus metrics and health HTTP endpoint"
    )
    audit: AuditConfig = Field(AuditConfig(), description="the signed, hash-chained audit log")
    commands: CommandsConfig = Field(
        CommandsConfig(), description="signed commands from the platform: who may write what"
    )
    devices_dir: Path | None = Field(
        None,
        description="a folder of device files (*.yaml, *.yml) whose devices are added, "
        "in file name order; relative to the config file",
    )
    devices: list[Device] = Field(
        min_length=1,
        description="the devices to poll, at least one (here or in devices_dir); `protocol` "
        "selects the driver and the keys below",
    )
    base_dir: Path = Field(Path("."), exclude=True, description="set from the file's folder")

    @model_validator(mode="after")
    def _inputs_exist(self) -> Config:
        known = self.input_tags()
        for i, m in enumerate(self.inference.models):
            missing = [t for t in m.inputs if t not in known]
            if missing:
                raise ValueError(
                    f"inference.models[{i}] ({m.name!r}): input tags {missing} are not tags of "
                    f"any device; write them as '<device>/<tag>'"
                )
        return self

    @model_validator(mode="after")
    def _command_scopes(self) -> Config:
        """Each key's tag patterns must name tags of this config (a typo would silently
        grant nothing, or, after a later edit, something else)."""
        import fnmatch

        known = self.input_tags()
        problems = [
            InitErrorDetails(
                type=PydanticCustomError(
                    "no_such_tags",
                    "{message}",
                    {
                        "message": f"pattern {pattern!r} matches no tag of any device; write "
                        "'<device>/<tag>', with '*' for any part"
                    },
                ),
                loc=("commands", "keys", i, "tags", j),
                input=pattern,
            )
            for i, key in enumerate(self.commands.keys)
            for j, pattern in enumerate(key.tags)
            if not any(fnmatch.fnmatchcase(t, pattern) for t in known)
        ]
        if problems:
            raise ValidationError.from_exception_data("Config", problems)
        return self

    @field_validator("devices")
    @classmethod
    def _shared_links(cls, v: list[Device]) -> list[Device]:
        """Devices on one serial port (one bus) must agree on its line settings."""
        problems = check_shared_links(v)
        if problems:
            raise ValidationError.from_exception_data(
                "devices",
                [
                    InitErrorDetails(
                        type=PydanticCustomError("shared_link", "{message}", {"message": m}),
                        loc=(i, field),
                        input=getattr(v[i], field),
                    )
                    for i, field, m in problems
                ],
            )
        return v

    @field_validator("devices")
    @classmethod
    def _unique(cls, v: list[Device]) -> list[Device]:
        seen: dict[str, int] = {}
        problems = []
        for i, d in enumerate(v):
            if d.name in seen:
                problems.append(
                    InitErrorDetails(
                        type=PydanticCustomError(
                            "duplicate_device",
                            "{message}",
                            {
                                "message": f"device name {d.name!r} is used twice; names "
                                f"must be unique (the first is devices[{seen[d.name]}])"
                            },
                        ),
                        loc=(i, "name"),
                        input=d.name,
                    )
                )
            seen.setdefault(d.name, i)
        if problems:
            raise ValidationError.from_exception_data("devices", problems)
        return v


CONFIG_REFERENCE = "config.md: /usr/share/doc/edgegw/, or docs/ in the source"


def _unwrap(t: Any) -> list[Any]:
    """The concrete types behind an annotation: Optional, unions and Annotated undone."""
    while get_origin(t) is Annotated:
        t = get_args(t)[0]
    if get_origin(t) in (Union, UnionType):
        return [u for a in get_args(t) for u in _unwrap(a) if u is not type(None)]
    return [t]


def fields_at(loc: tuple[str | int, ...], root: type[BaseModel] | None = None) -> list[str]:
    """The keys accepted in the mapping at ``loc`` (a pydantic error location, whose
    union members appear as their tag, e.g. ``devices, 0, modbus_tcp, tags, 0``)."""
    types: list[Any] = [root or Config]
    for part in loc:
        nxt: list[Any] = []
        for t in types:
            if isinstance(part, int) and get_origin(t) in (list, tuple):
                nxt += _unwrap(get_args(t)[0])
            elif isinstance(t, type) and issubclass(t, BaseModel):
                f = t.model_fields.get(str(part))
                if f is not None:
                    nxt += _unwrap(f.annotation)
                elif (tag := t.model_fields.get("protocol")) is not None and part in get_args(
                    tag.annotation
                ):
                    nxt.append(t)  # a union member named by its tag: stay on it
        types = [u for t in nxt for u in _unwrap(t)] or types[:0]
    names: list[str] = []
    for t in types:
        if isinstance(t, type) and issubclass(t, BaseModel):
            names += [
                f.alias or n for n, f in t.model_fields.items() if not f.exclude and n not in names
            ]
    return names


def unknown_field(loc: tuple[str | int, ...]) -> str:
    """ "unknown field" with the likely intended key, or the accepted ones."""
    key = str(loc[-1])
    known = fields_at(loc[:-1])
    close = difflib.get_close_matches(key, known, n=2, cutoff=0.6)
    if close:
        return f"unknown field; did you mean {' or '.join(map(repr, close))}?"
    if known and len(known) <= 16:
        return f"unknown field; accepted here: {', '.join(known)} (see {CONFIG_REFERENCE})"
    return f"unknown field (see {CONFIG_REFERENCE})"


def _dotted(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _resolve_paths(data: Any, base: Path) -> None:
    """Make relative file paths relative to the config file's folder."""
    if not isinstance(data, dict):
        return
    gw = data.get("gateway")
    if isinstance(gw, dict) and isinstance(gw.get("state_dir"), str):
        gw["state_dir"] = str(base / gw["state_dir"])
    up = data.get("uplink")
    tls = up.get("tls") if isinstance(up, dict) else None
    if isinstance(tls, dict):
        for k in ("ca_file", "cert_file", "key_file"):
            if isinstance(tls.get(k), str):
                tls[k] = str(base / tls[k])
    if isinstance(up, dict) and isinstance(up.get("password_file"), str):
        up["password_file"] = str(base / up["password_file"])
    commands = data.get("commands")
    keys = commands.get("keys") if isinstance(commands, dict) else None
    for key in keys if isinstance(keys, list) else ():
        if isinstance(key, dict) and isinstance(key.get("public_key"), str):
            key["public_key"] = str(base / key["public_key"])


Source = tuple[SourceMap, tuple[str | int, ...]]
"""Where included devices came from: the file's source map and the path of their list in it."""


def explain(
    exc: ValidationError, smap: SourceMap, included: dict[int, tuple[Source, int]] | None = None
) -> list[str]:
    """Pydantic errors as ``file:line:col: field: message`` lines. ``included`` maps the
    index of a device that came from a ``devices_dir`` file to that file and its index
    there, so the error names that file."""
    lines: list[tuple[str, int, int, str, tuple[str | int, ...]]] = []
    main = smap
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        smap = main
        if included and len(loc) >= 2 and loc[0] == "devices" and loc[1] in included:
            # a device from a devices_dir file: its file, its path there
            (smap, at), local = included[int(loc[1])]
            loc = (*at, local, *loc[2:])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            ctx = err.get("ctx", {})
            loc = (*loc, ctx.get("discriminator", "protocol").strip("'"))
            msg = (
                f"unknown protocol {ctx.get('tag')!r}; accepted: {ctx.get('expected_tags')}"
                if err["type"] == "union_tag_invalid"
                else "required field is missing"
            )
        found, mark = smap.locate(loc)
        if err["type"] == "extra_forbidden" and found in smap.key_marks:
            mark = smap.key_marks[found]
        # keep the part of the location that is in the file, plus a missing key's name
        shown = found + tuple(p for p in loc[len(found) :] if err["type"] == "missing")
        if err["type"] == "extra_forbidden":
            msg = unknown_field(loc)
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif (
            "input" in err
            and loc[-1:] != ("password",)  # a secret is never echoed
            and isinstance(err["input"], str | int | float)
            and repr(err["input"]) not in msg
        ):
            msg += f" (got {err['input']!r})"
        lines.append((smap.file, mark.line if mark else 0, mark.column if mark else 0, msg, shown))
    # in file order, as an editor shows them
    return [
        f"{f}:{ln}:{col}: {_dotted(shown)}: {msg}" if ln else f"{f}: {_dotted(shown)}: {msg}"
        for f, ln, col, msg, shown in sorted(lines, key=lambda x: (x[0] != main.file, x[:3]))
    ]


@dataclass(frozen=True, slots=True)
class Sources:
    """Where each part of a loaded config was written, for messages about it after load
    (``edgegw validate``'s file and overlap checks)."""

    smap: SourceMap
    included: dict[int, tuple[Source, int]]

    def where(self, loc: tuple[str | int, ...]) -> str:
        """``file:line:col: field`` of a config path such as ``("devices", 2, "tags", 0)``
        (a device from a devices_dir file is named in its own file)."""
        fmap = self.smap
        if len(loc) >= 2 and loc[0] == "devices" and loc[1] in self.included:
            (fmap, at), local = self.included[int(loc[1])]
            loc = (*at, local, *loc[2:])
        _, mark = fmap.locate(loc)
        place = f"{fmap.file}:{mark.line}:{mark.column}" if mark else fmap.file
        return f"{place}: {_dotted(loc)}"


def load_config(path: str | Path) -> Config:
    """Load and check a config file (and its ``devices_dir``); raises :class:`ConfigError`
    naming file, line and field."""
    return load_config_sourced(path)[0]


def load_config_sourced(path: str | Path) -> tuple[Config, Sources]:
    """:func:`load_config`, and where each part of the config was written."""
    p = Path(path)
    try:
        data, smap = load_yaml(p)
    except YamlError as exc:
        raise ConfigError([str(exc)]) from None
    if not isinstance(data, dict):
        raise ConfigError(
            [f"{p}:1:1: the top level must be a mapping with gateway, uplink, devices"]
        )
    base = p.resolve().parent
    _resolve_paths(data, base)
    resolve_paths(data.get("devices"), base)
    if "base_dir" in data:
        raise ConfigError([f"{p}:1:1: base_dir: unknown field"])
    data["base_dir"] = str(base)
    included = _include_devices(data, smap, base)
    _check_unique_names(data.get("devices"), smap, included)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(explain(exc, smap, included)) from None
    share_fields_sets(cfg)
    return cfg, Sources(smap, included)


def share_fields_sets(cfg: Config) -> None:
    """Tags with the same fields given share one set of them (pydantic keeps a set per
    model: 232 B a tag, 2.3 MiB at 10,000 tags). Setting a field of such a tag fails
    loudly (tags are not changed after validation) instead of changing every tag that
    shares the set; a copy of a tag gets a set of its own. (Each tag's values are in a
    key-sharing dict already: drivers.common.CompactFields.)"""
    shared: dict[frozenset[str], SharedFieldsSet] = {}
    for dev in cfg.devices:
        for tag in dev.tags:
            given = SharedFieldsSet(tag.__pydantic_fields_set__)
            object.__setattr__(tag, "__pydantic_fields_set__", shared.setdefault(given, given))


class SharedFieldsSet(frozenset[str]):
    """The fields given, shared by the tags that were given the same ones: setting a
    field of such a tag fails (AttributeError: it would add to every tag's set); a copy
    (``model_copy``, with or without ``update``) gets a set of its own."""

    __slots__ = ()

    def __copy__(self) -> set[str]:  # type: ignore[override]
        return set(self)


DEVICE_FILE_SUFFIXES = (".yaml", ".yml")


def _check_unique_names(
    devices: Any, smap: SourceMap, included: dict[int, tuple[Source, int]]
) -> None:
    """Device names are unique across the config and its device files; a duplicate names
    both places (the model only sees one list)."""
    if not isinstance(devices, list):
        return

    def where(i: int, field: bool = False) -> str:
        fmap, loc = smap, ("devices", i, "name")
        if i in included:
            (fmap, at), local = included[i]
            loc = (*at, local, "name")
        mark = fmap.marks.get(loc)
        place = f"{fmap.file}:{mark.line}:{mark.column}" if mark else fmap.file
        return f"{place}: {_dotted(loc)}" if field else place

    seen: dict[str, int] = {}
    problems = []
    for i, d in enumerate(devices):
        name = d.get("name") if isinstance(d, dict) else None
        if not isinstance(name, str):
            continue
        if name in seen:
            problems.append(
                f"{where(i, field=True)}: device name {name!r} is used twice; names must be unique "
                f"(also at {where(seen[name])})"
            )
        seen.setdefault(name, i)
    if problems:
        raise ConfigError(problems)


def _include_devices(
    data: dict[str, Any], smap: SourceMap, base: Path
) -> dict[int, tuple[Source, int]]:
    """Append the devices of the ``devices_dir`` files to ``data["devices"]``; returns,
    for each appended index, its file's source map, list path and index there."""
    folder = data.get("devices_dir")
    if folder is None:
        return {}

    def here() -> str:  # only for an error: positions mean parsing the file again
        mark = smap.marks.get(("devices_dir",))
        return f"{smap.file}:{mark.line}:{mark.column}" if mark else smap.file

    if not isinstance(folder, str) or not folder.strip():
        raise ConfigError([f"{here()}: devices_dir: give a folder, e.g. devices.d"])
    path = Path(folder) if Path(folder).is_absolute() else base / folder
    data["devices_dir"] = str(path)
    if not path.is_dir():
        raise ConfigError(
            [f"{here()}: devices_dir: {path} is not a folder (create it, or remove devices_dir)"]
        )
    devices = data.setdefault("devices", [])
    if not isinstance(devices, list):
        return {}  # the model reports the shape of `devices`
    included: dict[int, tuple[Source, int]] = {}
    problems: list[str] = []
    for file in sorted(f for f in path.iterdir() if f.suffix in DEVICE_FILE_SUFFIXES):
        try:
            part, fmap = load_yaml(file)
        except YamlError as exc:
            problems.append(str(exc))
            continue
        at: tuple[str | int, ...] = ("devices",) if isinstance(part, dict) else ()
        items = part.get("devices") if isinstance(part, dict) else part
        if not isinstance(items, list) or (isinstance(part, dict) and set(part) != {"devices"}):
            problems.append(
                f"{file}:1:1: a device file holds 'devices:' (a list of devices) or a bare "
                "list, nothing else"
            )
            continue
        resolve_paths(items, file.resolve().parent)
        for local, item in enumerate(items):
            included[len(devices)] = ((fmap, at), local)
            devices.append(item)
    if problems:
        raise ConfigError(problems)
    return included
