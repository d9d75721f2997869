"""The daemon's config, validated in a child process.

``load_checked(path)`` runs ``python -m gateway.configload PATH`` (this interpreter, this
package): the child parses the YAML, validates it with pydantic and makes the checks of
`edgegw validate` that a start makes (files, drivers, model pins:
gateway/preflight.py), then writes the result to its stdout pickled; the parent rebuilds
it as plain objects (gateway/plainconfig.py). So the daemon never imports pydantic or
the config models (about 17 MiB), and what a parse of a large config leaves in the heap
goes with the child: a SIGHUP reload and a pushed config are checked the same way and
leave nothing behind either.

The parent side (``load_checked``, ``to_plain``) imports nothing of pydantic; the child
side (``dumps``, ``main``) does.
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

from .plainconfig import ConfigError, Plain, loads

log = logging.getLogger("edgegw.config")

CHILD_TIMEOUT_S = 600.0  # a 10,000-tag config takes about a second; a hung child is a bug
_ROOT = str(Path(__file__).resolve().parents[1])  # where the `gateway` package is
_SELF = "/proc/self/exe"


class StartChecksFailed(ConfigError):
    """The config is valid, but what it names is not usable (a file, a driver, a model
    pin): the errors `edgegw validate` shows."""


class CheckCrashed(ConfigError):
    """The child process that checks the config could not run or died (out of memory, a
    broken installation): not the config's fault, so a restart may cure it."""


def load_checked(path: str | Path, *, checks: bool = True) -> Any:
    """The config at ``path`` as plain objects, validated (and, with ``checks``, its files,
    drivers and models checked) in a child process. Raises :class:`ConfigError` naming
    file, line and field (:class:`StartChecksFailed` for a failed check,
    :class:`CheckCrashed` when the child could not do its work); warnings of the checks
    are logged."""
    cmd = [sys.executable, "-m", "gateway.configload", str(path)]
    if not checks:
        cmd.append("--no-checks")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
    try:
        proc = subprocess.run(
            cmd,
            # The binary running now: its path (a venv's link into another user's home)
            # may not be the service user's to open; argv[0] still names the venv.
            executable=_SELF if os.path.exists(_SELF) else None,
            capture_output=True,
            env=env,
            timeout=CHILD_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise CheckCrashed(
            [f"{path}: checking the config took over {CHILD_TIMEOUT_S:.0f} s; gave up"]
        ) from None
    except OSError as exc:
        raise CheckCrashed([f"{path}: could not start the config check ({exc})"]) from None
    if proc.returncode != 0 or not proc.stdout:
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-5:]
        raise CheckCrashed(
            [f"{path}: the config check failed (exit {proc.returncode})"]
            + [f"  {line}" for line in tail]
        )
    result = loads(proc.stdout)
    if "errors" in result:
        raise ConfigError(result["errors"])
    for line in result["warnings"]:
        log.warning("%s", line)
    if result["failed"]:
        raise StartChecksFailed(result["failed"])
    return result["config"]


def to_plain(cfg: Any) -> Any:
    """A config as the daemon runs on it: plain objects, from a pydantic ``Config`` (a
    test's, or a tool's) or as it is when it is plain already."""
    if isinstance(cfg, Plain):
        return cfg
    return loads(dumps(cfg))


# -- the child side: pydantic -----------------------------------------------------------


def dumps(value: Any) -> bytes:
    """``value`` pickled with every pydantic model in it as a call of
    :func:`gateway.plainconfig.make` (its fields and private attributes, in order) and
    every secret as a :class:`gateway.plainconfig.Secret`."""
    from pydantic import BaseModel, SecretStr

    from .plainconfig import Secret, make

    layouts: dict[type, tuple[str, tuple[str, ...], tuple[str, ...]]] = {}

    def layout(cls: type[BaseModel]) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
        known = layouts.get(cls)
        if known is None:
            fields = tuple(cls.model_fields) + tuple(cls.__private_attributes__)
            excluded = tuple(n for n, f in cls.model_fields.items() if f.exclude)
            known = layouts[cls] = (f"{cls.__module__}.{cls.__qualname__}", fields, excluded)
        return known

    class Pickler(pickle.Pickler):
        def reducer_override(self, obj: Any) -> Any:
            if isinstance(obj, BaseModel):
                model, fields, excluded = layout(type(obj))
                values = obj.__dict__
                private = obj.__pydantic_private__ or {}
                row = tuple(values[f] if f in values else private.get(f) for f in fields)
                return make, (model, fields, excluded, row)
            if isinstance(obj, SecretStr):
                return Secret, (obj.get_secret_value(),)
            return NotImplemented

    import io

    out = io.BytesIO()
    Pickler(out, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    return out.getvalue()


def check(path: str, checks: bool = True) -> dict[str, Any]:
    """What the child reports: ``{"errors": lines}`` for a config that does not
    validate; else ``{"config", "failed", "warnings"}``."""
    from .config import load_config_sourced
    from .preflight import service_findings

    try:
        cfg, sources = load_config_sourced(path)
    except ConfigError as exc:
        return {"errors": exc.lines}
    failed, warnings = service_findings(cfg, sources, path) if checks else ([], [])
    return {"config": cfg, "failed": failed, "warnings": warnings}


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print("usage: python -m gateway.configload CONFIG [--no-checks]", file=sys.stderr)
        return 2
    result = check(argv[0], checks="--no-checks" not in argv[1:])
    data = dumps(result)
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
