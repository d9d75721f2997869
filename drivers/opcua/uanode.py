"""Node ids between their text form (``nodeid.py``) and asyncua's ``ua.NodeId``."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from typing import Any

from asyncua import ua

from .nodeid import ExplicitNode, format_node

__all__ = ["node_text", "to_ua_node"]


def to_ua_node(node: ExplicitNode, namespace: int) -> ua.NodeId:
    """The asyncua NodeId of a parsed node, with its namespace index (resolved if nsu=)."""
    ident: Any = node.identifier
    kinds = {
        "i": ua.NodeIdType.Numeric,
        "s": ua.NodeIdType.String,
        "g": ua.NodeIdType.Guid,
        "b": ua.NodeIdType.ByteString,
    }
    if node.id_type == "g":
        ident = uuid.UUID(str(ident))
    elif node.id_type == "b":
        ident = base64.b64decode(str(ident))
    return ua.NodeId(ident, namespace, kinds[node.id_type])


def node_text(node_id: ua.NodeId, namespaces: Sequence[str] | None = None) -> str:
    """The text form of an asyncua NodeId (``ns=2;s=...``); with ``namespaces``, the
    ``nsu=<uri>;`` form for namespaces other than 0."""
    t = node_id.NodeIdType
    ident: Any = node_id.Identifier
    if t == ua.NodeIdType.Guid:
        kind, ident = "g", str(ident)
    elif t == ua.NodeIdType.ByteString:
        kind, ident = "b", base64.b64encode(bytes(ident)).decode("ascii")
    elif t == ua.NodeIdType.String:
        kind = "s"
    else:
        kind = "i"
    ns = node_id.NamespaceIndex
    uri = namespaces[ns] if namespaces and 0 < ns < len(namespaces) else None
    return format_node(kind, ident, ns, uri)
