"""YAML loading that remembers where every value came from.

PyYAML's safe loader drops line numbers, and pydantic reports errors by path
(``devices.0.tags.3.type``). We compose the node tree ourselves, build plain Python
values from it and keep a map from each path to its line and column, so an error can
be shown as ``plant.yaml:41:13: devices[0].tags[3].type: ...``. Duplicate keys, which
PyYAML silently collapses, are an error here: the later one usually hides a typo.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Path_ = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Mark:
    line: int  # 1-based
    column: int  # 1-based


@dataclass(slots=True)
class SourceMap:
    file: str
    marks: dict[Path_, Mark] = field(default_factory=dict)
    key_marks: dict[Path_, Mark] = field(default_factory=dict)
    """Where each mapping key itself stands (for "unknown field" errors)."""

    def locate(self, loc: Path_) -> tuple[Path_, Mark | None]:
        """The deepest prefix of ``loc`` that exists in the file, and its position.

        Pydantic locations may contain elements that are not in the file (a union's
        member name, a missing key): those are skipped, and a missing key is reported
        at its parent mapping.
        """
        best: Path_ = ()
        cur: Path_ = ()
        for part in loc:
            cand = (*cur, part)
            if cand in self.marks:
                cur = cand
                best = cur
        return best, self.marks.get(best)


class YamlError(Exception):
    """The file is not valid YAML, or not the shape we read; the message says where."""


def _mark(node: yaml.Node) -> Mark:
    return Mark(node.start_mark.line + 1, node.start_mark.column + 1)


MAX_VALUES = 250_000
"""Values (mappings, lists, scalars) one file may expand to. A config of 10,000 tags is
about 60,000; a few hundred bytes of nested aliases (a "billion laughs" bomb) would
otherwise expand to billions and take the memory of the gateway with them."""
MAX_BYTES = 64 * 2**20
MAX_DEPTH = 200


class _Budget:
    """Counts the values built; aliases are followed, so this bounds what they expand to.
    Knows which nodes were built already (a second visit is an alias) and which are
    being built (a visit to one of those is an alias inside itself)."""

    def __init__(self, smap: SourceMap) -> None:
        self.left = MAX_VALUES
        self.smap = smap
        self.built: set[int] = set()
        self.open: dict[int, tuple[yaml.Node, bool]] = {}  # being built: (node, again)

    def enter(self, node: yaml.Node, depth: int) -> None:
        where = self.smap.file
        key = id(node)
        if key in self.open:
            m = _mark(node)
            raise YamlError(
                f"{where}:{m.line}:{m.column}: an alias refers to the value it is inside "
                "(a recursive structure): a config cannot hold one"
            )
        self.left -= 1
        if self.left < 0:
            # the outermost value being built again through an alias: the bomb's fuse
            again = [n for n, seen in self.open.values() if seen]
            m = _mark(again[0] if again else node)
            raise YamlError(
                f"{where}:{m.line}:{m.column}: the file expands to more than "
                f"{MAX_VALUES:,} values, through aliases of the value defined here "
                "(a YAML alias bomb?): refused. Write the repeated values out, or split "
                "the devices into devices_dir files"
            )
        if depth > MAX_DEPTH:
            m = _mark(node)
            raise YamlError(
                f"{where}:{m.line}:{m.column}: nested more than {MAX_DEPTH} levels deep: "
                "not a config"
            )


def _build(
    node: yaml.Node, path: Path_, smap: SourceMap, ctor: yaml.SafeLoader, budget: _Budget
) -> Any:
    budget.enter(node, len(path))
    if isinstance(node, yaml.CollectionNode):
        key = id(node)
        budget.open[key] = (node, key in budget.built)
        budget.built.add(key)
        try:
            return _build_collection(node, path, smap, ctor, budget)
        finally:
            del budget.open[key]
    smap.marks[path] = _mark(node)
    return ctor.construct_object(node, deep=True)


def _build_collection(
    node: yaml.CollectionNode,
    path: Path_,
    smap: SourceMap,
    ctor: yaml.SafeLoader,
    budget: _Budget,
) -> Any:
    smap.marks[path] = _mark(node)
    if isinstance(node, yaml.MappingNode):
        ctor.flatten_mapping(node)  # resolves YAML merge keys (<<)
        out: dict[Any, Any] = {}
        for knode, vnode in node.value:
            if not isinstance(knode, yaml.ScalarNode):  # never expand a key: it is text
                m = _mark(knode)
                raise YamlError(f"{smap.file}:{m.line}:{m.column}: mapping keys must be text")
            key = ctor.construct_object(knode, deep=True)
            if not isinstance(key, str | int):
                raise YamlError(
                    f"{smap.file}:{_mark(knode).line}:{_mark(knode).column}: "
                    f"mapping keys must be text, got {key!r}"
                )
            if key in out:
                first = smap.marks[(*path, key)]
                raise YamlError(
                    f"{smap.file}:{_mark(knode).line}:{_mark(knode).column}: "
                    f"duplicate key {key!r} (first defined at line {first.line})"
                )
            out[key] = _build(vnode, (*path, key), smap, ctor, budget)
            smap.key_marks[(*path, key)] = _mark(knode)
            if isinstance(vnode, yaml.CollectionNode):
                # a nested block starts on the next line; the key's line reads better
                smap.marks[(*path, key)] = _mark(knode)
        return out
    return [_build(n, (*path, i), smap, ctor, budget) for i, n in enumerate(node.value)]


def load_yaml(path: str | Path) -> tuple[Any, SourceMap]:
    """Parse one YAML document; return its value and a map of where each value is."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_BYTES:
            raise YamlError(
                f"{p}: {size:,} bytes: larger than any config ({MAX_BYTES // 2**20} MiB at "
                "most); is this the right file?"
            )
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise YamlError(f"{p}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise YamlError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    smap = SourceMap(str(p))
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise YamlError(f"{p}: the file is empty")
        return _build(node, (), smap, loader, _Budget(smap)), smap
    except yaml.MarkedYAMLError as exc:
        m = exc.problem_mark
        where = f"{p}:{m.line + 1}:{m.column + 1}" if m else str(p)
        raise YamlError(f"{where}: YAML syntax error: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise YamlError(f"{p}: YAML error: {exc}") from None
    except RecursionError:  # composing nests by recursion, before our depth check
        raise YamlError(f"{p}: nested too deeply to be a config") from None
    finally:
        loader.dispose()
