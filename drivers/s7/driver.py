"""Siemens S7 driver: one ISO-on-TCP connection to one PLC, one compiled plan per read.

snap7 provides the transport (TPKT/COTP, ``ISOTCPConnection``) and the setup of the
communication (PDU negotiation). The read requests are the plan's own precompiled PDUs
and their responses are parsed here, because snap7's ``read_multi_vars`` re-plans the
items itself, stops at 20 items and raises for the whole request when one item fails,
where we want per-item qualities. The snap7 socket is blocking: every exchange runs on
one worker thread per connection, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from snap7.connection import ISOTCPConnection
from snap7.error import S7ConnectionError, S7Error, S7TimeoutError, get_protocol_error_message
from snap7.s7protocol import S7Protocol

from drivers.contract import (
    Batch,
    ConnectError,
    DriverError,
    Quality,
    Reading,
    Value,
    ValueRejected,
    bad_readings,
)

from .decode import encode_value
from .plan import ReadPlan, Request, single_tag_plan
from .stats import S7Stats
from .types import AREAS, DataType

if TYPE_CHECKING:
    from .config import DeviceConfig, S7Tag

__all__ = ["ITEM_ERRORS", "Driver"]

_BAD_COMM = int(Quality.BAD_COMM)
_BAD_DEVICE = int(Quality.BAD_DEVICE)
_HEADER = struct.Struct(">BBHHHHBB")  # ACK_DATA header, 12 bytes
_ITEM = struct.Struct(">BBH")  # return code, transport size, length
_BIT_LENGTHS = (0x03, 0x04, 0x05)  # transport sizes whose length counts bits

ITEM_ERRORS: dict[int, str] = {
    0x01: "hardware fault",
    0x03: "access denied (S7-1200/1500: allow PUT/GET access in the CPU's protection "
    "settings and switch off 'optimized block access' for the DB)",
    0x05: "address out of range (past the end of the DB or area?)",
    0x06: "data type not supported",
    0x07: "data type inconsistent",
    0x0A: "object does not exist (is the DB in the PLC?)",
}
"""Return codes of a refused item, as the PLC sends them per item of a read."""


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _BadResponse(Exception):
    """The link is unusable: timeout, loss, or a response that does not fit the request."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


class _IsoTcp(ISOTCPConnection):
    """snap7's ISO-on-TCP transport with a socket that also reaches IPv6 and host names
    (snap7 3.3 opens an AF_INET socket only) and errors that say why."""

    tcp_up = False

    def _tcp_connect(self) -> None:
        ms = round(self.timeout * 1000)
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except socket.gaierror as exc:
            why = f"cannot resolve host name {self.host!r} ({exc.strerror})"
            raise S7ConnectionError(why) from None
        except TimeoutError:
            raise S7ConnectionError(f"no answer within {ms} ms") from None
        except OSError as exc:  # e.g. "Connection refused", "No route to host"
            raise S7ConnectionError(os.strerror(exc.errno) if exc.errno else str(exc)) from None
        # As snap7 does: complete PDUs, so no Nagle delay; keepalive finds dead idle links.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
            if hasattr(socket, option):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
        self.socket = sock
        self.tcp_up = True


class _Link:
    """A connected PLC: transport, granted PDU size and the PDU reference counter."""

    def __init__(self, conn: _IsoTcp, pdu: int) -> None:
        self.conn = conn
        self.pdu = pdu
        self.seq = 0

    def exchange(self, req: Request) -> tuple[bytes, int]:
        """Send one request and receive its response PDU; raises ``_BadResponse``."""
        return self.send(req.head, req.tail)

    def send(self, head: bytes, tail: bytes) -> tuple[bytes, int]:
        """Send ``head + <sequence number> + tail``; the response PDU and the number."""
        self.seq = seq = self.seq % 0xFFFF + 1
        try:
            self.conn.send_data(head + seq.to_bytes(2, "big") + tail)
            return self.conn.receive_data(), seq
        except S7TimeoutError:
            ms = round(self.conn.timeout * 1000)
            raise _BadResponse(f"no response within {ms} ms", timeout=True) from None
        except (S7Error, OSError) as exc:
            raise _BadResponse(f"connection lost ({exc})") from None

    def abort(self) -> None:
        """Unblock a worker waiting on this link (called from the event loop's thread)."""
        sock = self.conn.socket
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.conn.disconnect()  # COTP disconnect request if still up, then close


def parse_response(
    pdu: bytes, seq: int, req: Request, tally: S7Stats | None = None
) -> list[int | str] | str:
    """Where each item's data starts in ``pdu``, or why the PLC refused that item;
    a str for a PLC error on the whole request. Raises ``_BadResponse`` for a response
    that does not belong to the request (the link is then out of step). ``tally``
    counts the refusals by return code."""
    if len(pdu) < 12:
        raise _BadResponse(f"invalid response: {len(pdu)}-byte PDU")
    proto, kind, _, rseq, plen, dlen, err_class, err_code = _HEADER.unpack_from(pdu)
    if proto != 0x32 or rseq != seq:
        raise _BadResponse(f"invalid response: protocol {proto:#04x}, reference {rseq} != {seq}")
    if err_class or err_code:
        code = err_class << 8 | err_code
        why = f"PLC error {code:#06x} ({get_protocol_error_message(code)})"
        if tally is not None:
            tally.refused(f"{code:#06x}", why)
        return why
    n = len(req.items)
    if kind != 3 or plen != 2 or len(pdu) != 12 + plen + dlen or pdu[12:14] != bytes([4, n]):
        raise _BadResponse(f"invalid response: not a read answer with {n} items")
    out: list[int | str] = []
    off, end, last = 14, len(pdu), n - 1
    for k, item in enumerate(req.items):
        if off + 4 > end:
            raise _BadResponse(f"invalid response: truncated at item {k + 1} of {n}")
        rc, transport, length = _ITEM.unpack_from(pdu, off)
        off += 4
        size = (length + 7) >> 3 if transport in _BIT_LENGTHS else length
        if off + size > end:
            raise _BadResponse(f"invalid response: item {k + 1} of {n} truncated")
        if rc != 0xFF:
            why = ITEM_ERRORS.get(rc, "unknown reason")
            out.append(f"PLC refused the read: {why}, return code {rc:#04x}")
            if tally is not None:
                tally.refused(f"{rc:#04x}", f"item {k + 1} of {n}: {why}")
        elif size != item.size:
            out.append(f"PLC returned {size} bytes instead of {item.size}")
            if tally is not None:
                tally.decode_errors += 1
        else:
            out.append(off)
        off += size + (size & 1 if k < last else 0)
    return out


def _labels(plan: ReadPlan, req: Request, most: int = 3) -> str:
    labels = [plan.ranges[i.range].label for i in req.items]
    more = f" and {len(labels) - most} more" if len(labels) > most else ""
    return ", ".join(labels[:most]) + more


class Driver:
    """Reads compiled plans from one S7 PLC (satisfies ``drivers.contract.Driver``).

    snap7's own reconnect and heartbeat are not used: the gateway reconnects with
    backoff. A timeout or a response out of step closes the link, since a late answer
    could otherwise be taken for the next request's.
    """

    def __init__(self, device: DeviceConfig) -> None:
        self.device = device
        self.name = device.name
        self.where = _where(device.host, device.port)
        self.pdu_size: int | None = None
        """PDU size the PLC granted at the last connect."""
        self._timeout_s = device.timeout_ms / 1000
        self._link: _Link | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._job: Future[Any] | None = None
        self.stats = S7Stats()
        """Requests, timeouts, refusals by return code, ... (status and metrics)."""

    def __repr__(self) -> str:
        local, remote = self.device.tsaps
        return f"s7.Driver({self.name!r}, {self.where}, TSAP {local:#06x}/{remote:#06x})"

    @property
    def connected(self) -> bool:
        link = self._link
        return link is not None and link.conn.connected

    async def connect(self) -> None:
        """Open the connection and negotiate the PDU; raises ``ConnectError`` saying why."""
        await self.close()
        pool = ThreadPoolExecutor(1, thread_name_prefix=f"s7-{self.name}")
        job = pool.submit(self._open)
        try:
            link = await asyncio.wrap_future(job)
        except BaseException:
            # e.g. cancelled while the worker connects: close what it opens, then let it go.
            job.add_done_callback(_close_opened)
            pool.shutdown(wait=False)
            raise
        self._pool, self._link, self.pdu_size = pool, link, link.pdu

    def _open(self) -> _Link:
        d = self.device
        local, remote = d.tsaps
        conn = _IsoTcp(d.host, d.port, local_tsap=local, remote_tsap=remote)
        fail = f"cannot connect to {self.where} (device {self.name!r})"
        try:
            conn.connect(timeout=self._timeout_s)
        except (S7Error, OSError) as exc:
            if not conn.tcp_up:
                raise ConnectError(f"{fail}: {exc}") from None
            if isinstance(exc, S7TimeoutError):
                why = f"no answer to the ISO connection request within {d.timeout_ms} ms"
                raise ConnectError(f"{fail}: {why}") from None
            if "TPKT" in str(exc):  # e.g. an HTTP server on that port
                why = f"the peer does not speak ISO-on-TCP ({exc}): is it an S7 PLC?"
                raise ConnectError(f"{fail}: {why}") from None
            who = (
                f"remote TSAP {remote:#06x}"
                if d.remote_tsap is not None
                else f"rack {d.rack} / slot {d.slot} (S7-1200/1500: 0/1, S7-300: 0/2)"
            )
            why = f"the PLC refused the ISO connection ({exc}); check {who}"
            raise ConnectError(f"{fail}: {why}") from None
        protocol = S7Protocol()
        try:
            request = protocol.build_setup_communication_request(
                max_amq_caller=1, max_amq_callee=1, pdu_length=d.pdu_size
            )  # one job at a time: reads are sequential on one connection
            conn.send_data(request)
            granted = int(protocol.parse_response(conn.receive_data())["parameters"]["pdu_length"])
        except (S7Error, OSError, KeyError, TypeError) as exc:
            conn.disconnect()
            raise ConnectError(f"{fail}: S7 communication setup failed ({exc})") from None
        if granted < 24:
            conn.disconnect()
            raise ConnectError(f"{fail}: the PLC granted a PDU of {granted} bytes, too small")
        return _Link(conn, min(granted, d.pdu_size))

    async def read(self, plan: ReadPlan) -> Batch:
        """Run the plan on the worker thread; device and link faults become bad readings."""
        link, pool = self._link, self._pool
        if link is None or pool is None or not link.conn.connected:
            reason = f"not connected to {self.where}"
            readings = bad_readings(list(plan.tag_names), time.time_ns(), Quality.BAD_COMM, reason)
            return Batch(self.name, readings, reason)
        self._job = job = pool.submit(self._read, link, plan)
        batch, tally = await asyncio.wrap_future(job)
        self.stats.add(tally)  # here, on the loop: the status copies stats from here
        return batch

    def _read(self, link: _Link, plan: ReadPlan) -> tuple[Batch, S7Stats]:
        batch, tally = Batch(self.name), S7Stats()
        self._execute(link, plan.for_pdu(link.pdu), batch, tally, isolate=True)
        return batch, tally

    def _execute(
        self, link: _Link, plan: ReadPlan, batch: Batch, tally: S7Stats, *, isolate: bool
    ) -> bool:
        """Read every request of ``plan`` into ``batch``, counting in ``tally``; False if
        the link was lost."""
        out = batch.readings
        ranges, requests = plan.ranges, plan.requests
        parts: dict[int, dict[int, bytes]] = {}
        failed: dict[int, str] = {}
        retry: list[int] = []  # refused ranges of several tags, re-read tag by tag
        for k, req in enumerate(requests):
            tally.requests += 1
            try:
                pdu, seq = link.exchange(req)
                ts = time.time_ns()
                result = parse_response(pdu, seq, req, tally)
            except _BadResponse as exc:
                if exc.timeout:
                    tally.timeouts += 1
                else:
                    tally.link_errors += 1
                reason = f"{exc} reading {_labels(plan, req)} from {self.where}"
                link.close()
                ts = time.time_ns()
                for r in retry:  # the PLC had refused these: say so rather than BAD_COMM
                    out += _bad(ranges[r].tags, ts, _BAD_DEVICE, failed[r])
                for q in requests[k:]:
                    for r in q.completes:
                        out += _bad(ranges[r].tags, ts, _BAD_COMM, reason)
                batch.error = reason
                return False
            if isinstance(result, str):  # the whole request was refused
                result = [f"{result} for the request of {_labels(plan, req)}"] * len(req.items)
            else:
                tally.last_ok_ns = ts
            for item, got in zip(req.items, result, strict=True):
                if isinstance(got, str):
                    failed.setdefault(item.range, f"{ranges[item.range].label}: {got}")
                elif item.parts == 1:
                    out += ranges[item.range].decoder.decode(pdu, got, ts)
                else:
                    parts.setdefault(item.range, {})[item.part] = pdu[got : got + item.size]
            for r in req.completes:
                if r in failed:
                    if isolate and len(ranges[r].tags) > 1:
                        retry.append(r)
                    else:
                        out += _bad(ranges[r].tags, ts, _BAD_DEVICE, failed[r])
                        batch.error = batch.error or failed[r]
                elif r in parts:
                    chunks = parts.pop(r)
                    data = b"".join(chunks[p] for p in sorted(chunks))
                    out += ranges[r].decoder.decode(data, 0, ts)
        for n, r in enumerate(retry):
            if not self._execute(link, plan.isolated(r), batch, tally, isolate=False):
                ts = time.time_ns()
                for later in retry[n + 1 :]:
                    out += _bad(ranges[later].tags, ts, _BAD_COMM, batch.error or "")
                return False
        return True

    # --- writes (drivers.contract.Writer) ------------------------------------------------
    # They run on the connection's one worker thread, so they never interleave with a
    # read: the PLC sees one job at a time, as negotiated.

    def _tag(self, name: str) -> S7Tag:
        tag = next((t for t in self.device.tags if t.name == name), None)
        if tag is None:
            raise ValueRejected(f"device {self.name!r} has no tag {name!r}")
        return tag

    async def _run(self, fn: Any, *args: Any) -> Any:
        link, pool = self._link, self._pool
        if link is None or pool is None or not link.conn.connected:
            raise ConnectError(f"not connected to {self.where}")
        self._job = job = pool.submit(fn, link, *args)
        return await asyncio.wrap_future(job)

    async def read_tag(self, name: str) -> Value:
        """Read one tag now (its own request), decoded as a poll would."""
        tag = self._tag(name)
        batch, tally = await self._run(self._read_one, tag)
        self.stats.add(tally)
        reading = batch.readings[0]
        if reading[3] == _BAD_COMM:
            raise ConnectError(str(reading[4]))
        if reading[3] != int(Quality.GOOD):
            raise DriverError(str(reading[4]))
        value: Value = reading[2]
        return value

    async def write(self, name: str, value: Value) -> None:
        """Write one tag with one WriteVar request: a BOOL as a single bit (only that bit
        changes, in the PLC), anything else as its bytes."""
        tag = self._tag(name)
        if tag.data_type is DataType.STRING and isinstance(value, str):
            if len(value) > (tag.length or 0):
                raise ValueRejected(f"{len(value)} characters; tag {name!r} holds {tag.length}")
            try:
                value.encode("latin-1")
            except UnicodeEncodeError:
                raise ValueRejected(
                    f"tag {name!r}: an S7 STRING holds one byte per character (latin-1)"
                ) from None
        try:
            data = encode_value(tag, value)  # type: ignore[arg-type]
        except (ValueError, TypeError) as exc:
            raise ValueRejected(str(exc)) from None
        head, tail = write_request(tag, data)
        link = self._link
        if link is not None and len(head) + 2 + len(tail) > link.pdu:
            raise ValueRejected(
                f"tag {name!r}: {len(data)} bytes do not fit one write in the PDU of "
                f"{link.pdu} bytes the PLC granted"
            )
        problem = await self._run(self._write, head, tail, tag)
        if problem is not None:
            raise DriverError(problem)

    def _read_one(self, link: _Link, tag: S7Tag) -> tuple[Batch, S7Stats]:
        batch, tally = Batch(self.name), S7Stats()
        plan = single_tag_plan(self.device, tag, link.pdu)
        self._execute(link, plan, batch, tally, isolate=False)
        return batch, tally

    def _write(self, link: _Link, head: bytes, tail: bytes, tag: S7Tag) -> str | None:
        try:
            pdu, seq = link.send(head, tail)
            return parse_write_response(pdu, seq)
        except _BadResponse as exc:
            link.close()
            return f"{exc} writing {tag.address} on {self.where}"

    async def close(self) -> None:
        """Close the connection; safe to call twice, and while a read is running."""
        link, self._link = self._link, None
        pool, self._pool = self._pool, None
        job, self._job = self._job, None
        if link is not None and pool is not None:
            if job is not None and not job.done():
                link.abort()  # a read is waiting on the socket: end it now
            await asyncio.wrap_future(pool.submit(link.close))
        if pool is not None:
            pool.shutdown(wait=False)


_WRITE_VAR = 0x05
_TS_BIT, _TS_BYTE = 0x01, 0x02  # transport sizes of an address specification
_DATA_BIT, _DATA_BYTES = 0x03, 0x04  # ... and of a data item (length in bits for both)


def write_request(tag: S7Tag, data: bytes) -> tuple[bytes, bytes]:
    """(head, tail) of a WriteVar job for one tag: the PDU around its sequence number."""
    at = tag.location
    if tag.data_type is DataType.BOOL:
        spec = struct.pack(">BBBBHHB", 0x12, 0x0A, 0x10, _TS_BIT, 1, at.db, AREAS[at.area].code) + (
            at.byte * 8 + (at.bit or 0)
        ).to_bytes(3, "big")
        item = struct.pack(">BBH", 0x00, _DATA_BIT, 1) + bytes([1 if data[0] else 0])
    else:
        spec = struct.pack(
            ">BBBBHHB", 0x12, 0x0A, 0x10, _TS_BYTE, len(data), at.db, AREAS[at.area].code
        ) + (at.byte * 8).to_bytes(3, "big")
        item = struct.pack(">BBH", 0x00, _DATA_BYTES, len(data) * 8) + data
    param = bytes([_WRITE_VAR, 1]) + spec
    return b"\x32\x01\x00\x00", struct.pack(">HH", len(param), len(item)) + param + item


def parse_write_response(pdu: bytes, seq: int) -> str | None:
    """Why the PLC refused a one-item write, or None when it took it. Raises
    ``_BadResponse`` for a response that does not belong to the request."""
    if len(pdu) < 12:
        raise _BadResponse(f"invalid response: {len(pdu)}-byte PDU")
    proto, kind, _, rseq, plen, dlen, err_class, err_code = _HEADER.unpack_from(pdu)
    if proto != 0x32 or rseq != seq:
        raise _BadResponse(f"invalid response: protocol {proto:#04x}, reference {rseq} != {seq}")
    if err_class or err_code:
        code = err_class << 8 | err_code
        return f"PLC refused the write: error {code:#06x} ({get_protocol_error_message(code)})"
    if kind != 3 or plen != 2 or dlen < 1 or len(pdu) < 14 + dlen or pdu[12] != _WRITE_VAR:
        raise _BadResponse("invalid response: not a write answer")
    rc = pdu[14]
    if rc != 0xFF:
        why = ITEM_ERRORS.get(rc, "unknown reason")
        return f"PLC refused the write: {why}, return code {rc:#04x}"
    return None


def _close_opened(job: Future[_Link]) -> None:
    if not job.cancelled() and job.exception() is None:
        job.result().close()


def _bad(tags: tuple[str, ...], ts: int, quality: int, reason: str) -> list[Reading]:
    return [(t, ts, None, quality, reason) for t in tags]
