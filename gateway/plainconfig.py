"""The config the daemon runs on: the validated models' values in plain slotted objects,
without pydantic.

`edgegw run` validates its config in a child process (gateway/configload.py: the YAML
parse, pydantic and the config models, and the checks `edgegw validate` makes), which
hands the result over pickled; it is rebuilt here into objects of the same shape
(``cfg.uplink.host``, ``dev.tags[0].registers``). Neither pydantic (about 17 MiB of
imports and class schemas) nor the parse's start-up peak ever enters the daemon (README,
"Footprint"). What the running gateway calls on a model beyond its fields lives in a
mixin that the pydantic model and its plain copy share (:data:`MIXINS`), written once.

Nothing here imports pydantic; a test starts the daemon and checks that it never maps
pydantic-core (``tests/gateway/test_plainconfig.py``).
"""

from __future__ import annotations

import importlib
import io
import pickle
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    """A config that cannot be used; ``lines`` holds one ``file:line:col: field: problem`` each."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


class ConfigDerived:
    """Of the whole config (gateway/config.py's ``Config``)."""

    __slots__ = ()

    @property
    def state_dir(self) -> Path:
        return self.gateway.state_dir

    def input_tags(self) -> set[str]:
        """Every tag a device of this config produces: "<device>/<tag>"."""
        return {f"{d.name}/{t.name}" for d in self.devices for t in d.tags}

    @property
    def outbox_path(self) -> Path:
        return self.gateway.state_dir / self.outbox.path

    @property
    def audit_archive_dir(self) -> Path:
        return self.gateway.state_dir / self.audit.archive_dir

    def topic(self, kind: str) -> str:
        return f"{self.uplink.topic_prefix}/{self.gateway.id}/{kind}"


class CommandsDerived:
    """Of the ``commands`` section."""

    __slots__ = ()

    @property
    def enabled(self) -> bool:
        return bool(self.keys)


# "module.Class" of a pydantic model -> "module:Mixin" its plain copy takes its methods
# from (the model inherits the same mixin). A model not named here has fields only.
MIXINS: dict[str, str] = {
    "gateway.config.Config": "gateway.plainconfig:ConfigDerived",
    "gateway.config.CommandsConfig": "gateway.plainconfig:CommandsDerived",
    "drivers.modbus.tags.ModbusTag": "drivers.modbus.derived:TagDerived",
    "drivers.modbus.config.ModbusRtuDevice": "drivers.modbus.derived:RtuDerived",
    "drivers.opcua.config.OpcuaTag": "drivers.opcua.derived:TagDerived",
    "drivers.opcua.config.OpcuaDevice": "drivers.opcua.derived:DeviceDerived",
    "drivers.opcua.connection.Connection": "drivers.opcua.derived:ConnectionDerived",
    "drivers.s7.config.S7Tag": "drivers.s7.derived:TagDerived",
    "drivers.s7.config.DeviceConfig": "drivers.s7.derived:DeviceDerived",
    "inference.config.ModelBinding": "inference.derived:BindingDerived",
    "inference.config.InferenceConfig": "inference.derived:InferenceDerived",
}

# Modules the pickled config must never name: each imports pydantic.
PYDANTIC_MODULES = frozenset(
    {
        "gateway.config",
        "gateway.yamlsource",
        "drivers.modbus.config",
        "drivers.modbus.tags",
        "drivers.opcua.config",
        "drivers.opcua.connection",
        "drivers.s7.config",
        "drivers.writespec",
        "inference.config",
    }
)


class Plain:
    """A validated model's values. Compares equal to a copy with the same values (a reload
    compares old and new settings); hashable where its values are, like a frozen model."""

    __slots__ = ()
    _model: str = ""  # the pydantic model it copies, "module.Class"
    _fields: tuple[str, ...] = ()
    _excluded: tuple[str, ...] = ()  # not settings (``base_dir``): a reload skips them

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f) for f in self._fields)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((self._model, self._values()))

    def __repr__(self) -> str:
        inner = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields if f[0] != "_")
        return f"{type(self).__name__}({inner})"

    def __reduce__(self) -> Any:
        return (make, (self._model, self._fields, self._excluded, self._values()))


class Secret:
    """A secret field's value (pydantic's ``SecretStr``): not shown by ``repr``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __reduce__(self) -> Any:
        return (Secret, (self._value,))


_CLASSES: dict[str, type[Plain]] = {}


def plain_class(model: str, fields: tuple[str, ...], excluded: tuple[str, ...]) -> type[Plain]:
    """The plain class of the pydantic model ``model`` ("module.Class"): one slot a field,
    the model's mixin (:data:`MIXINS`) for what the gateway calls beyond its fields."""
    cls = _CLASSES.get(model)
    if cls is not None and cls._fields == fields:
        return cls
    bases: tuple[type, ...] = (Plain,)
    if model in MIXINS:
        module, _, name = MIXINS[model].partition(":")
        bases = (getattr(importlib.import_module(module), name), Plain)
    cls = type(
        model.rpartition(".")[2],
        bases,
        {
            "__slots__": fields,
            "__module__": __name__,
            "_model": model,
            "_fields": fields,
            "_excluded": excluded,
        },
    )
    _CLASSES[model] = cls
    return cls


def make(
    model: str, fields: tuple[str, ...], excluded: tuple[str, ...], values: tuple[Any, ...]
) -> Plain:
    """One plain object (what the pickled config calls for each model instance)."""
    obj = object.__new__(plain_class(model, fields, excluded))
    for name, value in zip(fields, values, strict=True):
        object.__setattr__(obj, name, value)
    return obj


class _Unpickler(pickle.Unpickler):
    """Only what a config holds: plain objects, secrets, paths, enums and builtins of our
    own modules; never a module that would import pydantic."""

    def find_class(self, module: str, name: str) -> Any:
        if module in PYDANTIC_MODULES or module.split(".")[0] in ("pydantic", "pydantic_core"):
            raise pickle.UnpicklingError(
                f"the config names {module}.{name}, which would import pydantic into the "
                "daemon (a model or enum belongs in a module without pydantic: see "
                "gateway/plainconfig.py)"
            )
        if module == __name__ and name in ("make", "Secret"):
            return globals()[name]
        top = module.split(".")[0]
        if top in ("gateway", "drivers", "inference", "pathlib", "builtins", "copyreg"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"the config names {module}.{name}: not a config value")


def loads(data: bytes) -> Any:
    """The config (or any value) pickled by gateway/configload.py, as plain objects."""
    return _Unpickler(io.BytesIO(data)).load()


def settings(obj: Plain) -> tuple[str, ...]:
    """The fields of ``obj`` that are settings (what a reload compares)."""
    return tuple(f for f in obj._fields if f not in obj._excluded and f[0] != "_")
