"""The one asyncua wrapper: connect (security, trust, login), limits, resolve, read,
subscriptions and browse. The driver's polling and subscribing, and `edgegw browse`,
are built on it.

asyncua's own reconnect is off: the gateway reconnects with backoff. Its session
persistence is on (``<pki_dir>/session.json``) for one purpose: when a link was lost
while the server kept the session (and its subscription), the next connect resumes
that session and closes it, subscriptions included, so nothing is left twice.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asyncua import Client, ua

from drivers.contract import ConnectError

from .decode import status_name
from .nodeid import BrowsePath, NodeRef
from .pki import ClientIdentity, TrustList, ensure_client_certificate
from .runtime import LINK_CODES, TOO_MUCH
from .security import (
    POLICIES,
    EndpointNotOffered,
    LoginRefused,
    ServerNotTrusted,
    ServerTrust,
    explain,
    security_mode,
)
from .types import SecurityPolicy
from .uanode import node_text, to_ua_node

if TYPE_CHECKING:
    from .connection import Connection

__all__ = [
    "EndpointNotOffered",
    "Limits",
    "LoginRefused",
    "OpcuaClient",
    "ResponseTooLarge",
    "ServerNotTrusted",
    "chunks",
    "message_limit",
    "node_text",
    "to_ua_node",
]

log = logging.getLogger("edgegw.opcua")
if logging.getLogger("asyncua").level == logging.NOTSET:
    # asyncua logs every lost link with tracebacks; the driver reports faults itself
    # (batches, ConnectError). Set a level on "asyncua" to see its log again.
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)

_LIMIT_NODES = (11705, 11710, 11712, 11714, 2255)  # OperationLimits..., NamespaceArray
_ROOT = ua.NodeId(84)
_HIERARCHICAL = ua.NodeId(33)
SESSION_TIMEOUT_MS = 600_000
DEFAULT_MAX_NODES = 2000  # per request when the server states no limit
MIN_MESSAGE_BYTES = 4 * 2**20  # the smallest response limit (a read of many nodes)
SMALLEST_CHUNK = 8192  # OPC UA's smallest chunk size: the most chunks a message may take


def message_limit(max_value_bytes: int) -> int:
    """The largest response accepted from a server (asyncua's ``max_messagesize``, sent
    in Hello): room for a few values at the device's ``max_value_bytes`` and a read of
    many small ones. Without it asyncua takes any size, and a 64 MiB string took the
    gateway to 574 MiB before the decoder could refuse it."""
    return max(MIN_MESSAGE_BYTES, 4 * max_value_bytes)


class ResponseTooLarge(ConnectionError):
    """A response was larger than ``message_limit``: asyncua dropped it and closed the
    link (a server that honours the limit answers BadResponseTooLarge instead)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """The server's OperationLimits (0 in the server means none; here: our default)."""

    max_nodes_per_read: int = DEFAULT_MAX_NODES
    max_nodes_per_browse: int = DEFAULT_MAX_NODES
    max_nodes_per_translate: int = DEFAULT_MAX_NODES
    max_monitored_items_per_call: int = DEFAULT_MAX_NODES


class _Client(Client):
    """asyncua's Client, telling whether connect() created a session or resumed one."""

    created_session = False

    async def create_session(self) -> ua.CreateSessionResult:
        self.created_session = True
        return await super().create_session()


def chunks(n: int, size: int) -> list[tuple[int, int]]:
    size = max(1, size)
    return [(i, min(i + size, n)) for i in range(0, n, size)]


class OpcuaClient:
    """One session with one server, configured by a :class:`Connection`."""

    def __init__(
        self,
        conn: Connection,
        *,
        pki_dir: Path,
        name: str,
        trust_new_server: bool = False,
        max_message_bytes: int = MIN_MESSAGE_BYTES,
    ) -> None:
        self.conn = conn
        self.max_message_bytes = max_message_bytes
        self.name = name
        self.pki_dir = pki_dir
        self.security = ServerTrust(
            conn, TrustList(pki_dir, conn.server_certificate), name, trust_new_server
        )
        self.timeout_s = conn.timeout_ms / 1000
        self.limits = Limits()
        self.namespaces: list[str] = []
        self.lost: str | None = None
        """Why the link was lost, once it was."""
        self.on_lost: Callable[[str], None] | None = None
        self.too_large_seen = False
        """This link was dropped by asyncua for an answer over ``max_message_bytes``."""
        self._client: _Client | None = None

    @property
    def connected(self) -> bool:
        c = self._client
        return c is not None and self.lost is None and c.uaclient.state.name == "CONNECTED"

    @property
    def uaclient(self) -> Any:
        assert self._client is not None, "not connected"
        return self._client.uaclient

    # --- connect / close ----------------------------------------------------------

    async def connect(self) -> None:
        """Open a session; raises ConnectError (or a subclass) saying what to fix."""
        await self.close()  # keeps the session file if the link was lost
        identity = await asyncio.to_thread(ensure_client_certificate, self.pki_dir, self.name)
        client = await self._open(identity)
        if not client.created_session:
            # A session that outlived a lost link: close it with its subscriptions.
            log.info("opcua %s: closing the session a lost link left open", self.name)
            await self._disconnect(client)
            client = await self._open(identity)
        self._client = client
        self.lost = None
        self.too_large_seen = False
        self._watch_size_limit(client)
        try:
            await self._read_limits()
        except Exception as exc:
            await self.close()
            raise explain(exc, self.security, identity) from None

    async def _open(self, identity: ClientIdentity) -> _Client:
        url = self.conn.endpoint
        client = _Client(url, timeout=self.timeout_s, watchdog_intervall=max(self.timeout_s, 2.0))
        client.application_uri = identity.application_uri
        client.name = client.description = f"edgegw {self.name}"
        client.session_timeout = SESSION_TIMEOUT_MS
        client.max_messagesize = self.max_message_bytes  # asyncua's default: no limit
        client.max_chunkcount = self.max_message_bytes // SMALLEST_CHUNK + 1
        client.session_state_path = self.pki_dir / "session.json"
        client.certificate_validator = self.security.validate
        client.connection_lost_callback = self._connection_lost
        if self.conn.username:
            client.set_user(self.conn.username)
            client.set_password(self.conn.read_password() or "")
        self.security.refused = None
        try:
            if self.conn.security_policy is not SecurityPolicy.NONE:
                server_der = await self.security.endpoint_certificate(self.timeout_s)
                await client.set_security(
                    POLICIES[self.conn.security_policy],
                    identity.cert_path,
                    identity.key_path,
                    server_certificate=server_der,
                    mode=security_mode(self.conn),
                )
            await asyncio.wait_for(client.connect(), self.timeout_s * 4)
        except ConnectError:
            await self._disconnect(client, keep_session=True)
            raise
        except Exception as exc:
            # keep_session: a failed attempt must not forget a session a lost link left
            await self._disconnect(client, keep_session=True)
            raise explain(exc, self.security, identity) from None
        return client

    async def _connection_lost(self, exc: Exception) -> None:
        if self.lost is None:
            self.lost = f"connection to {self.conn.endpoint} lost ({type(exc).__name__}: {exc})"
            if self.on_lost is not None:
                self.on_lost(self.lost)

    async def _disconnect(self, client: Client, keep_session: bool = False) -> None:
        if keep_session:
            client.session_state_path = None  # so disconnect() leaves the file to resume
        try:
            await asyncio.wait_for(client.disconnect(), self.timeout_s)
        except Exception:  # the link may be gone; local state is released anyway
            client.disconnect_socket()

    async def close(self, keep_session: bool = False) -> None:
        """Close the session (deleting its subscriptions); safe to call twice.

        ``keep_session``: the link is known dead: release local state only, and keep
        the session file so the next connect can close the server's side.
        """
        client, self._client = self._client, None
        if client is not None:
            await self._disconnect(client, keep_session or self.lost is not None)

    # --- limits and names ----------------------------------------------------------

    async def _read_limits(self) -> None:
        params = ua.ReadParameters()
        params.NodesToRead = [
            ua.ReadValueId(NodeId=ua.NodeId(i), AttributeId=ua.AttributeIds.Value)
            for i in _LIMIT_NODES
        ]
        values = await self.uaclient.read(params)
        got = [dv.Value.Value if dv.StatusCode.is_good() else None for dv in values]
        nums = [v if isinstance(v, int) and v > 0 else DEFAULT_MAX_NODES for v in got[:4]]
        self.limits = Limits(nums[0], nums[1], nums[2], nums[3])
        self.namespaces = list(got[4] or [])

    async def resolve(self, refs: Sequence[NodeRef]) -> list[ua.NodeId | str]:
        """Node ids for references; a str in place of one says why it did not resolve."""
        out: list[ua.NodeId | str] = []
        paths: list[tuple[int, BrowsePath]] = []
        for i, ref in enumerate(refs):
            if isinstance(ref, BrowsePath):
                paths.append((i, ref))
                out.append("")
            elif ref.uri is None:
                out.append(to_ua_node(ref, ref.namespace))
            elif ref.uri in self.namespaces:
                out.append(to_ua_node(ref, self.namespaces.index(ref.uri)))
            else:
                out.append(
                    f"namespace {ref.uri!r} is not on the server (it has: "
                    f"{', '.join(self.namespaces)})"
                )
        found = await self.translate([p for _, p in paths])
        for (i, path), result in zip(paths, found, strict=True):
            out[i] = (
                result if not isinstance(result, int) else await self._why_no_match(path, result)
            )
        return out

    async def translate(self, paths: Sequence[BrowsePath]) -> list[ua.NodeId | int]:
        """Browse paths from Root to node ids; an int (status code) where one fails."""
        requests = [
            ua.BrowsePath(
                StartingNode=_ROOT,
                RelativePath=ua.RelativePath(
                    Elements=[
                        ua.RelativePathElement(
                            ReferenceTypeId=_HIERARCHICAL,
                            IsInverse=False,
                            IncludeSubtypes=True,
                            TargetName=ua.QualifiedName(e.name, e.namespace),
                        )
                        for e in p.elements
                    ]
                ),
            )
            for p in paths
        ]
        out: list[ua.NodeId | int] = []
        for a, b in chunks(len(requests), self.limits.max_nodes_per_translate):
            try:
                results = await self.uaclient.translate_browsepaths_to_nodeids(requests[a:b])
            except ua.UaStatusCodeError as exc:
                if exc.code in LINK_CODES:
                    raise
                out += [exc.code] * (b - a)  # e.g. the service is not supported
                continue
            for r in results:
                if r.StatusCode.is_good() and r.Targets:
                    t = r.Targets[0].TargetId
                    out.append(ua.NodeId(t.Identifier, t.NamespaceIndex, t.NodeIdType))
                else:
                    out.append(r.StatusCode.value or ua.StatusCodes.BadNoMatch)
        return out

    async def _why_no_match(self, path: BrowsePath, code: int) -> str:
        if code != ua.StatusCodes.BadNoMatch:
            return f"browse path {path}: {status_name(code)}"
        prefixes = [BrowsePath(path.elements[:k]) for k in range(1, len(path.elements))]
        found = await self.translate(prefixes) if prefixes else []
        depth = sum(1 for _ in itertools.takewhile(lambda r: not isinstance(r, int), found))
        missing = path.elements[depth]
        under = str(BrowsePath(path.elements[:depth])) if depth else "the Root folder"
        return f"browse path {path}: {status_name(code)}: no node {str(missing)!r} under {under}"

    # --- services ------------------------------------------------------------------

    async def read(self, params: ua.ReadParameters) -> list[ua.DataValue]:
        """Read; raises ResponseTooLarge when the answer exceeded our message limit."""
        try:
            return await self.uaclient.read(params)  # type: ignore[no-any-return]
        except ua.UaStatusCodeError as exc:
            if exc.code == ua.StatusCodes.BadRequestTooLarge and self._dropped_by_us():
                raise ResponseTooLarge(self.too_large()) from None
            raise

    def too_large(self) -> str:
        return (
            f"the server's answer is larger than {self.max_message_bytes} bytes, the "
            "message limit set from the device's max_value_bytes; asyncua dropped it with "
            "the link"
        )

    def _dropped_by_us(self) -> bool:
        """asyncua refuses an incoming message over the limit with BadRequestTooLarge
        and closes the socket (a server's BadRequestTooLarge leaves it open)."""
        if self.too_large_seen:
            return True
        try:
            transport = self.uaclient.protocol.transport
        except (AssertionError, AttributeError):
            return True
        return transport is None or transport.is_closing()

    def _watch_size_limit(self, client: Client) -> None:
        """Notice when asyncua drops the link for an answer over our limit: it fails every
        pending request with BadRequestTooLarge (a subscription's Publish included, which
        nobody awaits here), then closes the socket. asyncua 2.1 internals: if they
        change, only this notice is lost (reads still see BadRequestTooLarge)."""
        proto = getattr(client.uaclient, "protocol", None)
        fail = getattr(proto, "_fail_all_pending", None)
        if fail is None:
            return

        def fail_all_pending(exc: Exception) -> None:
            if getattr(exc, "code", None) == ua.StatusCodes.BadRequestTooLarge:
                self.too_large_seen = True
            fail(exc)

        proto._fail_all_pending = fail_all_pending  # type: ignore[union-attr]

    async def create_subscription(
        self, publishing_ms: float, callback: Callable[[ua.PublishResult], Any]
    ) -> tuple[int, float]:
        """Create a subscription whose publish results go to ``callback`` raw (no per-item
        objects). Returns its id and the longest silence of a healthy subscription (s):
        three keep-alive periods as the server revised them."""
        keepalive = max(1, round(5000 / publishing_ms))  # a keep-alive every ~5 s
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=publishing_ms,
            RequestedMaxKeepAliveCount=keepalive,
            # An orphan (its link lost, not resumed) dies after ~60 s on the server.
            RequestedLifetimeCount=max(3 * keepalive, round(60_000 / publishing_ms)),
            MaxNotificationsPerPublish=0,
            PublishingEnabled=True,
            Priority=0,
        )
        r = await self.uaclient.create_subscription(params, callback)
        period = r.RevisedPublishingInterval / 1000 * max(1, r.RevisedMaxKeepAliveCount)
        return r.SubscriptionId, 3 * period

    async def create_monitored_items(
        self, subscription_id: int, items: Sequence[ua.MonitoredItemCreateRequest]
    ) -> list[ua.MonitoredItemCreateResult]:
        """In calls of at most MaxMonitoredItemsPerCall (halved if the server still says
        BadTooManyOperations)."""
        out: list[ua.MonitoredItemCreateResult] = []
        i = 0
        while i < len(items):
            chunk = list(items[i : i + self.limits.max_monitored_items_per_call])
            params = ua.CreateMonitoredItemsParameters(
                SubscriptionId=subscription_id,
                ItemsToCreate=chunk,
                TimestampsToReturn=ua.TimestampsToReturn.Both,
            )
            try:
                out += await self.uaclient.create_monitored_items(params)
            except ua.UaStatusCodeError as exc:
                if exc.code not in TOO_MUCH or len(chunk) == 1:
                    raise
                self.shrink("max_monitored_items_per_call", len(chunk))
                continue
            i += len(chunk)
        return out

    def shrink(self, limit: str, used: int) -> int:
        """The server refused ``used`` operations in one call although our limit allowed
        them: use at most half as many from now on (logged). Returns the new limit."""
        new = max(1, min(getattr(self.limits, limit), used // 2))
        if new < getattr(self.limits, limit):
            log.warning(
                "opcua %s: server refused %d operations in one call (BadTooManyOperations): "
                "%s is %d from now on",
                self.name,
                used,
                limit,
                new,
            )
            self.limits = Limits(**{**_asdict(self.limits), limit: new})
        return new

    async def delete_subscriptions(self, ids: Sequence[int]) -> None:
        await self.uaclient.delete_subscriptions(list(ids))

    async def browse(self, nodes: Sequence[ua.NodeId]) -> list[list[ua.ReferenceDescription]]:
        """Forward hierarchical references of each node (all pages)."""
        out: list[list[ua.ReferenceDescription]] = []
        for a, b in chunks(len(nodes), self.limits.max_nodes_per_browse):
            params = ua.BrowseParameters()
            params.NodesToBrowse = [
                ua.BrowseDescription(
                    NodeId=n,
                    BrowseDirection=ua.BrowseDirection.Forward,
                    ReferenceTypeId=_HIERARCHICAL,
                    IncludeSubtypes=True,
                    NodeClassMask=int(ua.NodeClass.Object | ua.NodeClass.Variable),
                    ResultMask=int(ua.BrowseResultMask.All),
                )
                for n in nodes[a:b]
            ]
            for result in await self.uaclient.browse(params):
                refs = list(result.References)
                cp = result.ContinuationPoint
                while cp:
                    more = await self.uaclient.browse_next(
                        ua.BrowseNextParameters(ContinuationPoints=[cp])
                    )
                    refs += more[0].References
                    cp = more[0].ContinuationPoint
                out.append(refs)
        return out


def _asdict(limits: Limits) -> dict[str, int]:
    return {f: getattr(limits, f) for f in Limits.__slots__}
