"""Read plan of an OPC UA device: everything that can be decided before connecting (pure).

The plan holds per tag its full name, parsed node reference, expected type and
deadband, in config order; the driver adds what only the server knows (namespace
indices, browse path targets, operation limits) when it connects. How requests are
split depends on the server's OperationLimits, so ``describe_plan`` says how they will
be split rather than listing them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .nodeid import BrowsePath, ExplicitNode, NodeRef, parse_node
from .types import DeadbandType, Mode, lookup_type

if TYPE_CHECKING:
    from .config import OpcuaDevice

__all__ = ["OpcuaPlan", "TagPlan", "compile_plan", "describe_plan"]

# OPC UA DeadbandType enumeration values.
_DEADBAND_IDS = {DeadbandType.ABSOLUTE: 1, DeadbandType.PERCENT: 2}


@dataclass(frozen=True, slots=True)
class TagPlan:
    full_name: str
    """``"<device>/<tag>"``."""
    node: NodeRef
    node_text: str
    """The node as configured (canonical form), for messages."""
    index_range: str | None
    """OPC UA IndexRange selecting one array element, e.g. ``"3"``."""
    expected_type: int | None
    """Built-in type id the value must have, when the config names one."""
    deadband: tuple[int, float] | None
    """(OPC UA DeadbandType id, value), subscribe mode only."""


@dataclass(frozen=True, slots=True)
class OpcuaPlan:
    device: str
    endpoint: str
    mode: Mode
    tags: tuple[TagPlan, ...]
    tag_names: tuple[str, ...]
    """Full names of all tags, in config order."""
    poll_interval_ms: int
    publishing_interval_ms: int
    sampling_interval_ms: int
    namespace_uris: tuple[str, ...]
    """Namespace URIs of ``nsu=`` nodes, resolved to indices at connect."""
    browse_paths: int
    """Tags given as browse paths, translated to node ids at connect."""


def compile_plan(device: OpcuaDevice) -> OpcuaPlan:
    """Compile a validated device into its plan (cannot fail for a validated device)."""
    prefix = device.name + "/"
    subscribe = device.mode is Mode.SUBSCRIBE
    tags = []
    uris: dict[str, None] = {}
    paths = 0
    for tag in device.tags:
        node = parse_node(tag.node)
        if isinstance(node, ExplicitNode) and node.uri is not None:
            uris[node.uri] = None
        paths += isinstance(node, BrowsePath)
        spec = lookup_type(tag.type) if tag.type else None
        deadband = tag.deadband or device.deadband
        if deadband is not None and (spec is None or spec.numeric) and subscribe:
            band: tuple[int, float] | None = (_DEADBAND_IDS[deadband.type], deadband.value)
        else:
            band = None
        tags.append(
            TagPlan(
                full_name=prefix + tag.name,
                node=node,
                node_text=tag.node,
                index_range=None if tag.index is None else str(tag.index),
                expected_type=spec.id if spec else None,
                deadband=band,
            )
        )
    return OpcuaPlan(
        device=device.name,
        endpoint=device.endpoint,
        mode=device.mode,
        tags=tuple(tags),
        tag_names=tuple(t.full_name for t in tags),
        poll_interval_ms=device.poll_interval_ms,
        publishing_interval_ms=device.publishing_ms,
        sampling_interval_ms=device.sampling_ms,
        namespace_uris=tuple(uris),
        browse_paths=paths,
    )


def describe_plan(plan: OpcuaPlan, max_names: int = 8) -> list[str]:
    """Human lines: what one connection will ask of the server."""
    n = len(plan.tags)
    cut = len(plan.device) + 1
    names = [t[cut:] for t in plan.tag_names[:max_names]]
    more = f", ... (+{n - max_names} more)" if n > max_names else ""
    lines = []
    if plan.mode is Mode.SUBSCRIBE:
        bands = sum(t.deadband is not None for t in plan.tags)
        band = f", deadband on {bands}" if bands else ""
        lines.append(
            f"subscription: {n} monitored item(s), publishing every "
            f"{plan.publishing_interval_ms} ms, sampling every {plan.sampling_interval_ms} ms"
            f"{band}; created in calls of at most the server's MaxMonitoredItemsPerCall"
        )
        lines.append(
            f"fallback: nodes the server will not monitor are read every "
            f"{plan.poll_interval_ms} ms (all of them if it refuses subscriptions)"
        )
    else:
        lines.append(
            f"read every {plan.poll_interval_ms} ms: {n} node(s), in requests of at most "
            "the server's MaxNodesPerRead"
        )
    resolve = []
    if plan.browse_paths:
        resolve.append(f"{plan.browse_paths} browse path(s)")
    if plan.namespace_uris:
        resolve.append("namespace URI(s) " + ", ".join(plan.namespace_uris))
    if resolve:
        lines.append("resolved at connect: " + "; ".join(resolve))
    lines.append(f"tags: {', '.join(names)}{more}")
    return lines
