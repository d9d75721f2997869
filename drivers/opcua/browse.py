"""Walk a server's address space and write the variables found as YAML tag entries.

Breadth first from a root node over forward hierarchical references, skipping
properties (HasProperty: EURange, EngineeringUnits...) and the standard ``Server``
object; one Browse request per MaxNodesPerBrowse nodes of a level, then one Read
per MaxNodesPerRead variables to learn each value's type.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from asyncua import ua

from .client import OpcuaClient, chunks, node_text
from .decode import status_name
from .runtime import LINK_CODES
from .types import TYPE_BY_ID

__all__ = ["BrowsedVariable", "browse_variables", "to_yaml"]

_HAS_PROPERTY = ua.NodeId(46)
_SERVER_OBJECT = ua.NodeId(2253)
_NOT_NAME = re.compile(r"[^A-Za-z0-9_.:-]+")

Progress = Callable[[int, int, int], None]
"""(nodes browsed, variables found, depth reached)."""


@dataclass(frozen=True, slots=True)
class BrowsedVariable:
    path: tuple[str, ...]
    """Browse names from the root (without namespace prefixes)."""
    node: str
    """Node id text, e.g. ``ns=2;s=Boiler.Temp`` (or ``nsu=...;``)."""
    type: str | None
    """Built-in type name of the value, when it is a supported scalar."""
    note: str | None = None
    """Why the variable cannot be read as it is (array, structure, status)."""


async def browse_variables(
    client: OpcuaClient,
    root: ua.NodeId,
    *,
    depth: int = 10,
    namespace_uris: bool = False,
    progress: Progress | None = None,
) -> list[BrowsedVariable]:
    """Every variable under ``root`` down to ``depth`` levels, in browse order."""
    seen = {root}
    level: list[tuple[ua.NodeId, tuple[str, ...]]] = [(root, ())]
    found: list[tuple[ua.NodeId, tuple[str, ...]]] = []
    browsed = 0
    for d in range(1, depth + 1):
        if not level:
            break
        refs = await client.browse([n for n, _ in level])
        browsed += len(level)
        nxt = []
        for (_, path), children in zip(level, refs, strict=True):
            for ref in children:
                if ref.ReferenceTypeId == _HAS_PROPERTY or getattr(ref.NodeId, "ServerIndex", 0):
                    continue  # properties describe a variable; remote nodes are not ours
                node = ua.NodeId(
                    ref.NodeId.Identifier, ref.NodeId.NamespaceIndex, ref.NodeId.NodeIdType
                )
                if node in seen or node == _SERVER_OBJECT:
                    continue
                seen.add(node)
                child = (node, (*path, ref.BrowseName.Name))
                nxt.append(child)
                if ref.NodeClass == ua.NodeClass.Variable:
                    found.append(child)
        level = nxt
        if progress is not None:
            progress(browsed, len(found), d)
    namespaces = client.namespaces if namespace_uris else None
    out = []
    for a, b in chunks(len(found), client.limits.max_nodes_per_read):
        values = await _read_values(client, [n for n, _ in found[a:b]])
        for (node, path), dv in zip(found[a:b], values, strict=True):
            out.append(BrowsedVariable(path, node_text(node, namespaces), *_type_of(dv)))
    return out


async def _read_values(client: OpcuaClient, nodes: list[ua.NodeId]) -> list[ua.DataValue]:
    """Values of nodes; when the server refuses the whole request (one odd node can do
    that), each node is read on its own so only the odd one is reported bad."""
    params = ua.ReadParameters(
        NodesToRead=[ua.ReadValueId(NodeId=n, AttributeId=ua.AttributeIds.Value) for n in nodes]
    )
    try:
        return await client.read(params)
    except ua.UaStatusCodeError as exc:
        if exc.code in LINK_CODES:
            raise
        if len(nodes) == 1:
            return [ua.DataValue(StatusCode=ua.StatusCode(exc.code))]
    return [v for n in nodes for v in await _read_values(client, [n])]


def _type_of(dv: ua.DataValue) -> tuple[str | None, str | None]:
    if not dv.StatusCode.is_good():
        return None, f"read: {status_name(dv.StatusCode.value)}"
    var = dv.Value
    spec = TYPE_BY_ID.get(int(var.VariantType)) if var is not None else None
    if spec is None:
        name = var.VariantType.name if var is not None else "Null"
        return None, f"value of type {name} is not supported"
    if var.is_array:
        n = len(var.Value or [])
        return spec.name, f"array of {n}: add index: <0..{max(n - 1, 0)}> to read one element"
    return spec.name, None


def tag_names(variables: list[BrowsedVariable]) -> list[str]:
    """Tag names from browse paths (``Boiler.Temperature``), made valid and unique."""
    names, used = [], set()
    for v in variables:
        base = ".".join(_NOT_NAME.sub("_", p).strip("_") or "_" for p in v.path) or "tag"
        name, n = base, 2
        while name in used:
            name, n = f"{base}_{n}", n + 1
        used.add(name)
        names.append(name)
    return names


def to_yaml(
    variables: list[BrowsedVariable],
    *,
    endpoint: str,
    root: str,
    device: str | None = None,
    extra: dict[str, str] | None = None,
) -> str:
    """Tag entries (or a whole device with ``device``) ready to paste into a device map.

    Variables that cannot be read as they are come out commented, with the reason.
    """
    readable = sum(v.note is None for v in variables)
    when = time.strftime("%Y-%m-%d %H:%M")
    lines = [f"# edgegw browse {endpoint} from {root} on {when}: {readable} readable variable(s)"]
    indent = "  "
    if device is not None:
        lines += ["devices:", "  - protocol: opcua", f"    name: {json.dumps(device)}"]
        lines.append(f"    endpoint: {json.dumps(endpoint)}")
        lines += [f"    {k}: {json.dumps(v)}" for k, v in (extra or {}).items()]
        lines.append("    tags:")
        indent = "      "
    else:
        lines.append("tags:")
    if not variables:
        lines.append(f"{indent}[]  # no variables found")
    for v, name in zip(variables, tag_names(variables), strict=True):
        entry = f"name: {json.dumps(name)}, node: {json.dumps(v.node)}"
        if v.type:
            entry += f", type: {v.type}"
        if v.note is None:
            lines.append(f"{indent}- {{{entry}}}")
        else:
            lines.append(f"{indent}# - {{{entry}}}  # {v.note}")
    return "\n".join(lines) + "\n"
