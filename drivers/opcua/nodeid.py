"""Node references as engineers write them, parsed at load time (pure, no asyncua).

Accepted forms (the OPC UA text notation, Part 6 §5.3.1.10, plus browse paths):

==============================  =====================================================
``ns=2;i=1001``                 numeric identifier in namespace index 2
``ns=2;s=Boiler.Temp``          string identifier (everything after ``s=``, verbatim)
``ns=2;g=<guid>``               GUID identifier
``ns=2;b=<base64>``             opaque (ByteString) identifier
``i=2258``                      namespace 0 (the OPC UA standard nodes)
``nsu=urn:plant;s=Boiler.Temp`` namespace given by URI, resolved to an index at connect
``/Objects/2:Plant/2:Boiler``   browse path from the Root folder; ``2:`` is the
                                namespace index of each browse name (none: 0);
                                ``&`` escapes ``/``, ``:`` and ``&`` inside a name
==============================  =====================================================

Syntax is checked here; whether the node exists is only known at connect.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from dataclasses import dataclass
from typing import Literal, TypeAlias

__all__ = [
    "BrowsePath",
    "ExplicitNode",
    "NodeRef",
    "NodeSyntaxError",
    "PathElement",
    "format_node",
    "parse_node",
]

IdType: TypeAlias = Literal["i", "s", "g", "b"]

_ID_TYPES = "i= (numeric), s= (string), g= (GUID), b= (base64 ByteString)"
_FORMS = (
    "accepted: ns=<index>;i=<number>, ns=<index>;s=<string>, ns=<index>;g=<guid>, "
    "ns=<index>;b=<base64>, nsu=<namespace uri>;s=<string> (or ;i= ;g= ;b=), "
    "i=<number> for namespace 0, or a browse path like /Objects/2:Plant/2:Temperature"
)
_PREFIX = re.compile(r"^(?:ns=(?P<ns>[^;]*);|nsu=(?P<nsu>[^;]*);)?(?P<rest>.*)$", re.DOTALL)
_UINT32_MAX = 0xFFFFFFFF


class NodeSyntaxError(ValueError):
    """A node reference that cannot be parsed; the message says why and what is accepted."""


@dataclass(frozen=True, slots=True)
class ExplicitNode:
    """A node id: namespace (index, or URI resolved at connect) plus identifier."""

    id_type: IdType
    identifier: int | str
    """int for ``i``; the text for ``s``; canonical lowercase GUID for ``g``; base64 for ``b``."""
    namespace: int = 0
    uri: str | None = None
    """When set, ``namespace`` is unknown until the server's NamespaceArray is read."""

    def __str__(self) -> str:
        return format_node(self.id_type, self.identifier, self.namespace, self.uri)


@dataclass(frozen=True, slots=True)
class PathElement:
    namespace: int
    name: str

    def __str__(self) -> str:
        name = _escape(self.name)
        return f"{self.namespace}:{name}" if self.namespace else name


@dataclass(frozen=True, slots=True)
class BrowsePath:
    """Browse names followed from the Root folder over hierarchical references."""

    elements: tuple[PathElement, ...]

    def __str__(self) -> str:
        return "/" + "/".join(str(e) for e in self.elements)


NodeRef: TypeAlias = ExplicitNode | BrowsePath


def format_node(
    id_type: IdType, identifier: int | str, namespace: int = 0, uri: str | None = None
) -> str:
    """The text form, e.g. ``ns=2;s=Boiler.Temp``, ``i=2258``, ``nsu=urn:x;i=5``."""
    prefix = f"nsu={uri};" if uri is not None else f"ns={namespace};" if namespace else ""
    return f"{prefix}{id_type}={identifier}"


def _escape(name: str) -> str:
    return name.replace("&", "&&").replace("/", "&/").replace(":", "&:")


def parse_node(text: str) -> NodeRef:
    """Parse one node reference; raises :class:`NodeSyntaxError` quoting the text."""
    if not isinstance(text, str):
        raise NodeSyntaxError(f"node {text!r} is not text; {_FORMS}")
    s = text.strip()
    if not s:
        raise NodeSyntaxError(f"node is empty; {_FORMS}")
    if s.startswith("/"):
        return _parse_path(text, s)
    m = _PREFIX.match(s)
    assert m is not None  # the pattern matches any string
    namespace, uri = 0, None
    if m["ns"] is not None:
        ns = m["ns"].strip()
        if not ns.isdigit() or int(ns) > 65535:
            raise NodeSyntaxError(
                f"node {text!r}: namespace index {ns!r} is not a number 0..65535 "
                "(write nsu=<uri>; to give the namespace by URI)"
            )
        namespace = int(ns)
    elif m["nsu"] is not None:
        uri = m["nsu"].strip()
        if not uri:
            raise NodeSyntaxError(f"node {text!r}: nsu= needs a namespace URI, e.g. nsu=urn:plant;")
    rest = m["rest"]
    id_type, sep, value = rest.partition("=")
    id_type = id_type.strip()
    if not sep or id_type not in ("i", "s", "g", "b"):
        hint = ""
        if rest.startswith(("ns", "nsu")):
            hint = " (two namespace prefixes?)"
        elif not sep:
            hint = " (no '<type>=' identifier)"
        raise NodeSyntaxError(
            f"node {text!r}: unknown identifier type {id_type!r}{hint}; identifier types: "
            f"{_ID_TYPES}; {_FORMS}"
        )
    return ExplicitNode(id_type, _identifier(text, id_type, value), namespace, uri)  # type: ignore[arg-type]


def _identifier(text: str, id_type: str, value: str) -> int | str:
    if id_type == "s":
        if not value:
            raise NodeSyntaxError(f"node {text!r}: the string identifier after s= is empty")
        return value  # verbatim: string identifiers may hold spaces, ';' and '='
    value = value.strip()
    if id_type == "i":
        if not value.isdigit() or int(value) > _UINT32_MAX:
            raise NodeSyntaxError(
                f"node {text!r}: numeric identifier {value!r} is not a number 0..{_UINT32_MAX}"
            )
        return int(value)
    if id_type == "g":
        try:
            return str(uuid.UUID(value))
        except ValueError:
            raise NodeSyntaxError(
                f"node {text!r}: {value!r} is not a GUID; accepted: "
                "g=xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx (hex digits)"
            ) from None
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if not raw:
        raise NodeSyntaxError(
            f"node {text!r}: {value!r} is not base64 (the opaque identifier after b= is "
            "base64-encoded bytes, e.g. b=AQID)"
        )
    return base64.b64encode(raw).decode("ascii")


def _split_path(s: str) -> list[str]:
    """Split on unescaped '/', undoing '&' escapes; keeps ':' escapes marked as '\\0'."""
    parts: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(s):
        c = s[i]
        if c == "&" and i + 1 < len(s):
            nxt = s[i + 1]
            cur.append("\0" if nxt == ":" else nxt)
            i += 2
            continue
        if c == "/":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def _parse_path(text: str, s: str) -> BrowsePath:
    parts = _split_path(s[1:])
    elements = []
    for n, part in enumerate(parts, 1):
        prefix, colon, name = part.partition(":")
        if colon and prefix.strip().isdigit():
            ns = int(prefix.strip())
            if ns > 65535:
                raise NodeSyntaxError(
                    f"browse path {text!r}: element {n} has namespace index {ns}; "
                    "accepted: 0..65535"
                )
        else:
            ns, name = 0, part
        name = name.replace("\0", ":")
        if not name.strip():
            raise NodeSyntaxError(
                f"browse path {text!r}: element {n} is empty; write browse names "
                "separated by '/', each as <namespace index>:<name>, e.g. "
                "/Objects/2:Plant/2:Temperature"
            )
        elements.append(PathElement(ns, name))
    return BrowsePath(tuple(elements))
