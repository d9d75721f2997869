"""An OPC UA server simulator on asyncua's own Server, for tests, the demo and benchmarks.

It serves, in namespace ``urn:edgegw:simulator`` (index 2):

- ``Objects/Plant/Boiler/{Temperature, Pressure, Running}`` (``ns=2;s=Plant.Boiler.*``);
- ``Objects/Types/<Type>``: one variable per supported built-in type
  (``ns=2;s=Types.Double`` ...), plus ``Types.DoubleArray`` (an array of 5);
- one variable per node-id form: ``ns=2;i=1001``, ``ns=2;g=`` :data:`GUID`,
  ``ns=2;b=`` :data:`OPAQUE`;
- ``bulk`` Doubles ``ns=2;s=Bulk.0000`` ... under ``Objects/Bulk``;
- :data:`UNENCODABLE`, a value the server cannot encode: any Read including it fails;
- for ``devices`` (``serve_devices``), every node their tags reference.

Values follow deterministic waveforms of time (``update``); ``set_value`` pins one.
Options: security endpoints with a generated server certificate, users, operation
limits that are enforced (BadTooManyOperations), and no subscriptions at all. The
server binds to loopback only and restarts on the same port (``restart``).

``python -m drivers.opcua.simulator [device-map.yaml]`` serves a map (default: the
sample next to this file) until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.common.callback import CallbackType
from asyncua.common.utils import ServiceError

from .config import OpcuaDevice, SecurityPolicy, load_device_map
from .nodeid import BrowsePath, ExplicitNode, parse_node
from .pki import ensure_server_certificate
from .simdata import (
    SimUsers,
    child,
    ensure_namespace,
    free_port,
    is_loopback,
    values,
    waveform,
)
from .types import TYPES
from .uanode import node_text, to_ua_node

__all__ = [
    "GUID",
    "NAMESPACE",
    "OPAQUE",
    "SAMPLE_MAP",
    "UNENCODABLE",
    "OpcuaSimulator",
    "serve_devices",
    "waveform",
]

NAMESPACE = "urn:edgegw:simulator"
GUID = "72962b91-fa75-4ae6-8d28-b404dc7daf63"
OPAQUE = "AQIDBA=="  # base64 of 01 02 03 04
UNENCODABLE = "ns=2;s=Faults.Unencodable"
SAMPLE_MAP = Path(__file__).with_name("sample-device.yaml")
log = logging.getLogger("edgegw.opcua.simulator")
_VT = {t.name: ua.VariantType(t.id) for t in TYPES}
BOILER = {"Temperature": "Double", "Pressure": "Float", "Running": "Boolean"}


class OpcuaSimulator:
    """An asyncua server with the address space of the module docstring."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        security: bool = False,
        pki_dir: Path | None = None,
        users: dict[str, str] | None = None,
        allow_anonymous: bool = True,
        max_nodes_per_read: int = 0,
        max_monitored_items_per_call: int = 0,
        subscriptions: bool = True,
        bulk: int = 0,
        devices: Sequence[OpcuaDevice] = (),
    ) -> None:
        if not is_loopback(host):
            raise ValueError(f"host {host!r}: the simulator binds to loopback only")
        self.host, self.port = host, port
        self.security = security
        self.users, self.allow_anonymous = dict(users or {}), allow_anonymous
        self.max_nodes_per_read = max_nodes_per_read
        self.max_monitored_items_per_call = max_monitored_items_per_call
        self.subscriptions, self.bulk, self.devices = subscriptions, bulk, list(devices)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if pki_dir is None and security:
            self._tmp = tempfile.TemporaryDirectory(prefix="edgegw-opcua-sim-")
            pki_dir = Path(self._tmp.name)
        self.pki_dir = pki_dir
        self.server: Server | None = None
        self._vars: dict[str, tuple[ua.NodeId, str, int]] = {}  # text -> id, type, length
        self._pinned: dict[str, Any] = {}
        self.read_sizes: list[int] = []
        """Nodes per Read request from clients, in order (to test request splitting)."""
        self.item_calls: list[int] = []
        """Items per CreateMonitoredItems call from clients, in order."""

    @property
    def endpoint(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"opc.tcp://{host}:{self.port}/edgegw/sim"

    @property
    def certificate_path(self) -> Path:
        """The server certificate (DER), once started with ``security``."""
        assert self.pki_dir is not None, "started without security"
        return self.pki_dir / "server-cert.der"

    @property
    def nodes(self) -> list[str]:
        """Text forms of every simulated variable."""
        return list(self._vars)

    async def start(self) -> None:
        """Listen; values pinned with ``set_value`` survive restarts."""
        if self.server is not None:
            return
        if self.port == 0:
            self.port = free_port(self.host)
        server = Server(user_manager=SimUsers(self.users, self.allow_anonymous))
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name("edgegw OPC UA simulator")
        if self.security:
            await self._secure(server)
        else:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        tokens = [ua.UserNameIdentityToken] + (
            [ua.AnonymousIdentityToken] if self.allow_anonymous else []
        )
        server.set_identity_tokens(tokens)
        await self._limits(server)
        await self._populate(server)
        await server.start()
        self.server = server
        await self.update(time.time())

    async def _secure(self, server: Server) -> None:
        assert self.pki_dir is not None
        key_path, cert_path = ensure_server_certificate(
            self.pki_dir, server.get_application_uri(), "edgegw OPC UA simulator"
        )
        server.set_security_policy(
            [
                ua.SecurityPolicyType.NoSecurity,
                ua.SecurityPolicyType.Basic256Sha256_Sign,
                ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
                ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
                ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
            ]
        )
        await server.load_certificate(cert_path)
        await server.load_private_key(key_path)

    async def _limits(self, server: Server) -> None:
        await self.advertise_limits(
            self.max_nodes_per_read, self.max_monitored_items_per_call, server
        )
        read_limit, item_limit = self.max_nodes_per_read, self.max_monitored_items_per_call

        def pre_read(event: Any, _dispatcher: Any) -> None:
            if not event.is_external:
                return
            n = len(event.request_params.NodesToRead)
            self.read_sizes.append(n)
            if read_limit and n > read_limit:
                raise ServiceError(ua.StatusCodes.BadTooManyOperations)

        server.subscribe_server_callback(CallbackType.PreRead, pre_read)
        service = server.iserver.subscription_service
        create_items = service.create_monitored_items

        async def limited_items(params: ua.CreateMonitoredItemsParameters) -> Any:
            self.item_calls.append(len(params.ItemsToCreate))
            if item_limit and len(params.ItemsToCreate) > item_limit:
                raise ServiceError(ua.StatusCodes.BadTooManyOperations)
            return await create_items(params)

        async def no_subscriptions(*args: Any, **kw: Any) -> Any:
            raise ServiceError(ua.StatusCodes.BadServiceUnsupported)

        # Our own server object: asyncua has no hook before these services.
        service.create_monitored_items = limited_items  # type: ignore[method-assign]
        if not self.subscriptions:
            service.create_subscription = no_subscriptions  # type: ignore[method-assign]

    async def _populate(self, server: Server) -> None:
        self._vars.clear()
        ns = await server.register_namespace(NAMESPACE)
        for device in self.devices:  # first: a device's node wins over a built-in one
            await self._add_device(server, device)
        objects = server.nodes.objects
        plant = await objects.add_object(ua.NodeId("Plant", ns), ua.QualifiedName("Plant", ns))
        boiler = await plant.add_object(
            ua.NodeId("Plant.Boiler", ns), ua.QualifiedName("Boiler", ns)
        )
        for name, type_name in BOILER.items():
            await self._add(boiler, ua.NodeId(f"Plant.Boiler.{name}", ns), name, type_name)
        types = await objects.add_object(ua.NodeId("Types", ns), ua.QualifiedName("Types", ns))
        for spec in TYPES:
            await self._add(types, ua.NodeId(f"Types.{spec.name}", ns), spec.name, spec.name)
        await self._add(types, ua.NodeId("Types.DoubleArray", ns), "DoubleArray", "Double", 5)
        forms = await objects.add_object(ua.NodeId("Forms", ns), ua.QualifiedName("Forms", ns))
        for text, name in ((f"ns={ns};i=1001", "Numeric"), (f"ns={ns};g={GUID}", "Guid"),
                           (f"ns={ns};b={OPAQUE}", "Opaque")):  # fmt: skip
            node = parse_node(text)
            assert isinstance(node, ExplicitNode)
            await self._add(forms, to_ua_node(node, ns), name, "Int32")
        # A value asyncua's server cannot encode: every Read that includes it fails as a
        # whole (BadInternalError), the way odd nodes break some servers' responses.
        faults = await objects.add_object(ua.NodeId("Faults", ns), ua.QualifiedName("Faults", ns))
        await faults.add_variable(
            ua.NodeId(UNENCODABLE.split(";s=")[1], ns),
            ua.QualifiedName("Unencodable", ns),
            ua.Variant("<x/>", ua.VariantType.XmlElement),
        )
        if self.bulk:
            bulk = await objects.add_object(ua.NodeId("Bulk", ns), ua.QualifiedName("Bulk", ns))
            for k in range(self.bulk):
                await self._add(bulk, ua.NodeId(f"Bulk.{k:04d}", ns), f"{k:04d}", "Double")

    async def _add(
        self,
        parent: Any,
        node_id: ua.NodeId,
        name: str,
        type_name: str,
        length: int = 0,
        writable: bool = False,
    ) -> None:
        """A variable; ``length`` > 0: an array of that many elements. Clients may write
        it when ``writable`` (a device map's tags with a ``write`` block)."""
        text = node_text(node_id)
        if text in self._vars:
            return  # a device map already made it
        value = values(type_name, text, time.time(), length)
        qname = ua.QualifiedName(name, node_id.NamespaceIndex)
        variant = ua.Variant(value, _VT[type_name], is_array=length > 0)
        var = await parent.add_variable(node_id, qname, variant)
        if writable:
            await var.set_writable()
        self._vars[text] = (node_id, type_name, length)

    async def _add_device(self, server: Server, device: OpcuaDevice) -> None:
        """Create every node the device's tags reference, under Objects/<device name>."""
        for tag in device.tags:
            ref = parse_node(tag.node)
            type_name = tag.type or "Double"
            length = 0 if tag.index is None else max(5, tag.index + 1)
            if isinstance(ref, BrowsePath):
                parent = server.nodes.root
                for k, el in enumerate(ref.elements):
                    await ensure_namespace(server, el.namespace)
                    qname = ua.QualifiedName(el.name, el.namespace)
                    found = await child(parent, qname)
                    if found is not None:
                        parent = found
                        continue
                    path = ".".join(e.name for e in ref.elements[: k + 1])
                    node_id = ua.NodeId(f"{device.name}:{path}", el.namespace)
                    if k == len(ref.elements) - 1:
                        await self._add(
                            parent, node_id, el.name, type_name, length, tag.write is not None
                        )
                    else:
                        parent = await parent.add_object(node_id, qname)
                continue
            ns = ref.namespace if ref.uri is None else await server.register_namespace(ref.uri)
            await ensure_namespace(server, ns)
            folder = await child(server.nodes.objects, ua.QualifiedName(device.name, 2))
            if folder is None:
                folder = await server.nodes.objects.add_folder(
                    ua.NodeId(f"Devices.{device.name}", 2), ua.QualifiedName(device.name, 2)
                )
            node_id = to_ua_node(ref, ns)
            if node_text(node_id) not in self._vars:
                await self._add(folder, node_id, tag.name, type_name, length, tag.write is not None)

    async def stop(self) -> None:
        """Stop listening and drop every session (as a server process that exits)."""
        server, self.server = self.server, None
        if server is not None:
            await server.stop()

    async def restart(self) -> None:
        """A new server on the same port: sessions and subscriptions are gone."""
        await self.stop()
        await self.start()

    async def __aenter__(self) -> OpcuaSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    async def advertise_limits(
        self, max_nodes_per_read: int, max_items_per_call: int, server: Server | None = None
    ) -> None:
        """Set the OperationLimits clients read (MaxNodesPerRead, MaxMonitoredItemsPerCall).
        Enforced are the constructor's: advertising others makes a server that hides or
        misstates its limits."""
        server = server or self.server
        assert server is not None
        for node, limit in ((11705, max_nodes_per_read), (11714, max_items_per_call)):
            dv = ua.DataValue(ua.Variant(limit, ua.VariantType.UInt32))
            await server.write_attribute_value(ua.NodeId(node), dv)

    def subscription_count(self) -> int:
        assert self.server is not None
        return len(self.server.iserver.subscription_service.subscriptions)

    async def set_value(self, node: str, value: Any, status: int = 0) -> None:
        """Pin a variable's value (and status code); ``update`` then leaves it alone."""
        self._pinned[node] = (value, status)
        await self._write(node, value, status)

    async def write(self, node: str, value: Any, status: int = 0) -> None:
        """Write a variable once (``update`` overwrites it later unless it is pinned)."""
        await self._write(node, value, status)

    async def _write(self, text: str, value: Any, status: int = 0) -> None:
        if self.server is None:
            return
        node_id, type_name, length = self._vars[text]
        now = datetime.now(UTC)
        variant = ua.Variant(value, _VT[type_name], is_array=length > 0)
        dv = ua.DataValue(variant, ua.StatusCode(status), SourceTimestamp=now, ServerTimestamp=now)
        await self.server.write_attribute_value(node_id, dv)

    async def update(self, t: float) -> None:
        """Write every variable's waveform value at time ``t`` (pinned ones: their pin)."""
        for text, (_, type_name, length) in self._vars.items():
            if text in self._pinned:
                await self._write(text, *self._pinned[text])
            else:
                await self._write(text, values(type_name, text, t, length))

    async def run_updates(self, interval_s: float = 0.1) -> None:
        """Update every ``interval_s`` until cancelled."""
        while True:
            await self.update(time.time())
            await asyncio.sleep(interval_s)


async def serve_devices(
    devices: Sequence[OpcuaDevice],
    stop: asyncio.Event,
    *,
    interval_s: float = 0.1,
    pki_dir: Path | None = None,
) -> None:
    """Simulate devices until ``stop`` is set: one server per endpoint host:port, with the
    security, users and nodes their configs ask for. Secure servers keep their
    certificate in ``pki_dir/<host>_<port>/server-cert.der`` (default: a temporary
    folder), logged at start so it can be trusted."""
    groups: dict[tuple[str, int], list[OpcuaDevice]] = {}
    for d in devices:
        groups.setdefault((d.host, d.port), []).append(d)
    sims = []
    for (host, port), group in groups.items():
        users = {d.username: d.read_password() or "" for d in group if d.username}
        secure = any(d.security_policy is not SecurityPolicy.NONE for d in group)
        where = None if pki_dir is None else pki_dir / f"{host.replace(':', '_')}_{port}"
        sim = OpcuaSimulator(
            host=host, port=port, security=secure, pki_dir=where, users=users, devices=group
        )
        sims.append(sim)
    tasks: list[asyncio.Task[None]] = []
    try:
        for sim in sims:
            await sim.start()
            if sim.security:
                log.warning(
                    "simulator %s: server certificate %s", sim.endpoint, sim.certificate_path
                )
            tasks.append(asyncio.create_task(sim.run_updates(interval_s)))
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for sim in sims:
            await sim.__aexit__()


def main(argv: Sequence[str] | None = None) -> int:
    """Serve a device map until interrupted."""
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("asyncua").setLevel(logging.ERROR)  # its warnings are about itself
    args = sys.argv[1:] if argv is None else list(argv)
    devices = load_device_map(Path(args[0]) if args else SAMPLE_MAP)
    for d in devices:
        print(f"simulating {d.name}: {d.endpoint}, {len(d.tags)} tags", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_devices(devices, asyncio.Event()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
