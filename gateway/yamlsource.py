"""YAML loading that remembers where every value came from.

PyYAML's safe loader drops line numbers, and pydantic reports errors by path
(``devices.0.tags.3.type``). We compose the node tree ourselves, build plain Python
values from it and keep a map from each path to its line and column, so an error can
be shown as ``plant.yaml:41:13: devices[0].tags[3].type: ...``. Duplicate keys, which
PyYAML silently collapses, are an error here: the later one usually hides a typo.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

Path_ = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Mark:
    line: int  # 1-based
    column: int  # 1-based


class SourceMap:
    """Where each value of a file came from. Built on first use, by parsing the file again
    with positions: only an error needs it, and a 10,000-tag config's marks took tens of
    MiB that the process kept."""

    def __init__(self, file: str, text: str | None = None) -> None:
        self.file = file
        # parse this when a position is first asked for; kept compressed meanwhile (a
        # 10,000-tag config: 480 KiB of text, 30 KiB compressed)
        self._text = None if text is None else zlib.compress(text.encode(), 1)
        self._marks: dict[Path_, Mark] = {}
        self._key_marks: dict[Path_, Mark] = {}

    def _fill(self) -> None:
        if self._text is not None:
            text, self._text = self._text, None
            _load_marked(zlib.decompress(text).decode(), self)

    @property
    def marks(self) -> dict[Path_, Mark]:
        """Where each value stands."""
        self._fill()
        return self._marks

    @property
    def key_marks(self) -> dict[Path_, Mark]:
        """Where each mapping key itself stands (for "unknown field" errors)."""
        self._fill()
        return self._key_marks

    def locate(self, loc: Path_) -> tuple[Path_, Mark | None]:
        """The deepest prefix of ``loc`` that exists in the file, and its position.

        Pydantic locations may contain elements that are not in the file (a union's
        member name, a missing key): those are skipped, and a missing key is reported
        at its parent mapping.
        """
        marks = self.marks
        best: Path_ = ()
        cur: Path_ = ()
        for part in loc:
            cand = (*cur, part)
            if cand in marks:
                cur = cand
                best = cur
        return best, marks.get(best)


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
    smap._marks[path] = _mark(node)
    return ctor.construct_object(node, deep=True)


def _build_collection(
    node: yaml.CollectionNode,
    path: Path_,
    smap: SourceMap,
    ctor: yaml.SafeLoader,
    budget: _Budget,
) -> Any:
    smap._marks[path] = _mark(node)
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
                first = smap._marks[(*path, key)]
                raise YamlError(
                    f"{smap.file}:{_mark(knode).line}:{_mark(knode).column}: "
                    f"duplicate key {key!r} (first defined at line {first.line})"
                )
            out[key] = _build(vnode, (*path, key), smap, ctor, budget)
            smap._key_marks[(*path, key)] = _mark(knode)
            if isinstance(vnode, yaml.CollectionNode):
                # a nested block starts on the next line; the key's line reads better
                smap._marks[(*path, key)] = _mark(knode)
        return out
    return [_build(n, (*path, i), smap, ctor, budget) for i, n in enumerate(node.value)]


class _Refused(Exception):
    """The fast loader met what the marked build reports with a position."""


class _FastLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """Values only, parsed by libyaml: a 10,000-tag config loads in a fraction of the
    time and memory of the marked build. Duplicate and non-text keys are refused, as the
    marked build refuses them."""


def _mapping(loader: _FastLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)  # resolves YAML merge keys (<<)
    out: dict[Any, Any] = {}
    for knode, vnode in node.value:
        key = loader.construct_object(knode, deep=True)
        if not isinstance(key, str | int) or key in out:
            raise _Refused
        out[key] = loader.construct_object(vnode, deep=True)
    return out


_FastLoader.add_constructor("tag:yaml.org,2002:map", _mapping)

_STR = "tag:yaml.org,2002:str"
_PLAIN_TAGS = (None, "!")


def _from_events(loader: _FastLoader) -> Any:
    """The document's value straight from the parser's events, never holding a node tree
    (a 10,000-tag config: 5 MiB at the peak instead of 30). Anything beyond plain
    mappings, sequences and scalars (anchors, aliases, merge keys, unusual tags) is
    ``_Refused``: the node-based loader handles it."""
    get, ctors, resolve = loader.get_event, loader.yaml_constructors, loader.resolve
    scalar, seq_end, map_end = yaml.ScalarEvent, yaml.SequenceEndEvent, yaml.MappingEndEvent
    # One object per distinct string: libyaml makes a new one per event, and 10,000 tags
    # repeat "name", "address", "type", "float32" (3 MiB at the start-up peak, which stays
    # in RSS as holes among what lives on).
    strings: dict[str, str] = {}

    def value(ev: Any, depth: int = 0) -> Any:
        t = type(ev)
        if ev.anchor is not None or t is yaml.AliasEvent:
            raise _Refused
        if t is scalar:
            tag = ev.tag
            if tag in _PLAIN_TAGS:
                tag = resolve(yaml.ScalarNode, ev.value, ev.implicit)
            if tag == _STR:
                return strings.setdefault(ev.value, ev.value)
            ctor = ctors.get(tag)
            if ctor is None:
                raise _Refused
            return ctor(loader, yaml.ScalarNode(tag, ev.value, ev.start_mark, ev.end_mark))
        if ev.tag not in _PLAIN_TAGS or depth > MAX_DEPTH:
            raise _Refused  # the marked build says where
        depth += 1
        if t is yaml.SequenceStartEvent:
            items = []
            while type(e := get()) is not seq_end:
                items.append(value(e, depth))
            return items
        out: dict[Any, Any] = {}
        while type(e := get()) is not map_end:
            if type(e) is not scalar:
                raise _Refused
            key = value(e, depth)
            if key == "<<" or not isinstance(key, str | int) or key in out:
                raise _Refused
            out[key] = value(get(), depth)
        return out

    if type(get()) is not yaml.StreamStartEvent or type(get()) is not yaml.DocumentStartEvent:
        raise _Refused
    data = value(get())
    if type(get()) is not yaml.DocumentEndEvent or type(get()) is not yaml.StreamEndEvent:
        raise _Refused
    return data


def load_yaml(path: str | Path) -> tuple[Any, SourceMap]:
    """Parse one YAML document; return its value and a map of where each value is (built
    when first asked for)."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_BYTES:
            raise YamlError(
                f"{p}: {size:,} bytes: larger than any config ({MAX_BYTES // 2**20} MiB at "
                "most); is this the right file?"
            )
        text = p.read_text(encoding="utf-8")
    except PermissionError as exc:
        from .permissions import explain_permission

        raise YamlError(explain_permission(exc)) from None
    except OSError as exc:
        raise YamlError(f"{p}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise YamlError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        data = _fast(text)
    except (_Refused, yaml.YAMLError, RecursionError):
        smap = SourceMap(str(p))  # the marked build says what is wrong, and where
        return _load_marked(text, smap), smap
    if data is None:
        raise YamlError(f"{p}: the file is empty")
    return data, SourceMap(str(p), text)


def _within_budget(data: Any) -> None:
    """libyaml shares the value of an anchor among its aliases; whatever walks the config
    next (validation) would expand them. Count the values as that walk would, and leave
    a document over the budget (an alias bomb, a recursive alias) to the marked build,
    which says where. At most MAX_VALUES steps."""
    left, stack = MAX_VALUES, [data]
    while stack:
        left -= 1
        if left < 0 or len(stack) > MAX_VALUES:
            raise _Refused
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)


def _fast(text: str) -> Any:
    """From events if the document is plain, else with libyaml's node tree."""
    for build in (_from_events, _FastLoader.get_single_data):
        loader = _FastLoader(text)
        try:
            data = build(loader)
            if build is not _from_events:
                _within_budget(data)
            return data
        except _Refused:
            if build is not _from_events:
                raise
        finally:
            loader.dispose()
    raise AssertionError("unreachable")


def _load_marked(text: str, smap: SourceMap) -> Any:
    """The value of ``text``, filling ``smap`` with the position of every value."""
    p = smap.file
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise YamlError(f"{p}: the file is empty")
        return _build(node, (), smap, loader, _Budget(smap))
    except yaml.MarkedYAMLError as exc:
        line, col, why = explain_syntax(exc, text.splitlines())
        raise YamlError(f"{p}:{line}:{col}: {why}") from None
    except yaml.YAMLError as exc:
        raise YamlError(f"{p}: YAML error: {exc}") from None
    except RecursionError:  # composing nests by recursion, before our depth check
        raise YamlError(f"{p}: nested too deeply to be a config") from None
    finally:
        loader.dispose()


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _previous(lines: list[str], i: int) -> int | None:
    """The index of the last non-blank, non-comment line before line ``i`` (0-based)."""
    for j in range(i - 1, -1, -1):
        if lines[j].strip() and not lines[j].lstrip().startswith("#"):
            return j
    return None


def explain_syntax(exc: yaml.MarkedYAMLError, lines: list[str]) -> tuple[int, int, str]:
    """(line, column, what is wrong and how to fix it) for a PyYAML syntax error: the
    common mistakes of hand-written maps (tabs, indentation, a missing or extra ':')
    in words, at the place to fix."""
    m, ctx = exc.problem_mark, exc.context_mark
    line, col = (m.line + 1, m.column + 1) if m else (1, 1)
    problem = exc.problem or ""
    text = lines[line - 1] if 0 < line <= len(lines) else ""
    if "'\\t'" in problem or "\t" in text[: max(col, 1)]:
        tab = text.find("\t")
        return (
            line,
            (tab + 1) if tab >= 0 else col,
            "a tab character: YAML indents with spaces only; replace the tab with spaces",
        )
    if "could not find expected ':'" in problem and ctx is not None:
        return (
            ctx.line + 1,
            ctx.column + 1,
            "this line has no ':' after its key (write 'key: value'), or is indented "
            "wrongly so it continues the line above",
        )
    if "mapping values are not allowed here" in problem:
        before = _previous(lines, line - 1)
        if (
            before is not None
            and ":" not in lines[before]
            and not lines[before].lstrip().startswith("-")
        ):
            return (
                before + 1,
                _indent(lines[before]) + 1,
                f"this line has no ':' (write 'key: value'): {lines[before].strip()!r}",
            )
        if text[: col - 1].count(": ") >= 1 and text[: col - 1].strip():
            return (
                line,
                col,
                "a second ': ' on one line: quote a value that contains ': ' "
                "(e.g. note: 'a: b'), or put the nested key on its own, indented line",
            )
        return (
            line,
            col,
            "a ':' where none is expected: this line is indented more than a key above "
            "that already has a value; align it with the keys of its block",
        )
    if "expected <block end>" in problem:
        before = _previous(lines, line - 1)
        above = (
            f", the line above (line {before + 1}) at column {_indent(lines[before]) + 1}"
            if before is not None
            else ""
        )
        return (
            line,
            col,
            f"wrong indentation: this line starts at column {col}{above}; the keys (or '-' "
            "items) of one block start in the same column, a nested block further right",
        )
    if "end of stream" in problem and ctx is not None and "quoted" in (exc.context or ""):
        return (
            ctx.line + 1,
            ctx.column + 1,
            "this quote is never closed: end the value with the same quote character",
        )
    if ("flow mapping" in (exc.context or "") or "flow sequence" in (exc.context or "")) and (
        ctx is not None
    ):
        what = "{" if "mapping" in (exc.context or "") else "["
        return (
            line,
            col,
            f"inside the '{what}' opened at line {ctx.line + 1}, column {ctx.column + 1}: "
            f"{problem}; separate items with ', ' and close it on the same line or with "
            "matching brackets",
        )
    return line, col, f"YAML syntax error: {problem}"
