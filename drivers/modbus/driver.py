"""Modbus drivers: the read loop they share, the Modbus TCP driver, and ``Driver(dev)``,
which picks the driver for ``dev.protocol`` (RTU and RTU over TCP are in ``rtu.py``)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drivers.contract import (
    Batch,
    ConnectError,
    DriverError,
    Quality,
    Reading,
    Value,
    ValueRejected,
)

from .decode import DecodeError, decode_value, encode_value
from .learn import Learned
from .pdu import FUNCTIONS, ReplyMismatch, reply_mismatch
from .plan import ReadPlan, Request, compile_plan, full_name, split_request
from .tcp import LinkLost, NoAnswer, TcpLink
from .types import TABLES, DataType, OnIllegalAddress, Table, WriteFunctions

if TYPE_CHECKING:
    from .config import ModbusDevice, ModbusTag, ModbusTcpDevice

__all__ = ["EXCEPTION_NAMES", "Driver", "LinkStats", "ModbusDriverBase", "ModbusTcpDriver"]

log = logging.getLogger("edgegw.modbus")

_BAD_COMM = int(Quality.BAD_COMM)
_BAD_DEVICE = int(Quality.BAD_DEVICE)
_BAD_CONFIG = int(Quality.BAD_CONFIG)

# table -> (client method, response attribute holding the values)
READS: dict[Table, tuple[str, str]] = {
    Table.HOLDING: ("read_holding_registers", "registers"),
    Table.INPUT: ("read_input_registers", "registers"),
    Table.COIL: ("read_coils", "bits"),
    Table.DISCRETE: ("read_discrete_inputs", "bits"),
}

EXCEPTION_NAMES: dict[int, str] = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    7: "negative acknowledge",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}

RawValues = list[int] | list[bool]
_FC = {t: FUNCTIONS[m] for t, (m, _) in READS.items()}  # table -> read function code


def _settle(splits: dict[int, list[Any]], req: Request, ok: bool, learned: Any) -> None:
    """A half of a split request was read (``ok``: answered with data); when both halves
    of a split were answered, the barrier between them is proven and learned."""
    record = splits.pop(id(req), None)
    if record is None:
        return
    record[1] -= 1
    record[2] = record[2] and ok
    if record[1] == 0 and record[2] and learned is not None:
        learned.add_barrier(record[0])


def where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bad(tags: tuple[str, ...], ts: int, quality: int, reason: str) -> list[Reading]:
    return [(t, ts, None, quality, reason) for t in tags]


@dataclass(slots=True)
class LinkStats:
    """Counters of one driver, for status and metrics (cheap: a few increments per
    request, none per reading)."""

    requests: int = 0
    timeouts: int = 0
    """Requests that got no answer in time (after retries)."""
    link_errors: int = 0
    """Requests that lost the link (connection closed, port gone) or got a mismatched answer."""
    exceptions: dict[int, int] = field(default_factory=dict)
    """Modbus exception responses by exception code (2 illegal address, 6 busy, ...)."""
    decode_errors: int = 0
    last_ok_ns: int | None = None
    """When a request was last answered with data."""
    last_exception: str | None = None
    splits: int = 0
    """Refused requests split in two to isolate refused addresses."""
    plan_requests: int = 0
    """Requests of the plan in use (after what was learned)."""
    learned: list[str] = field(default_factory=list)
    """What was learned about the device's map, one human line each."""

    def carry_from(self, old: LinkStats) -> None:
        """Go on counting from ``old`` (the driver a reload replaced)."""
        self.requests += old.requests
        self.timeouts += old.timeouts
        self.link_errors += old.link_errors
        self.decode_errors += old.decode_errors
        self.splits += old.splits
        for code, n in old.exceptions.items():
            self.exceptions[code] = self.exceptions.get(code, 0) + n
        self.last_ok_ns = self.last_ok_ns or old.last_ok_ns
        self.last_exception = self.last_exception or old.last_exception


# Exceptions that mean "this address range is not readable" and make the driver split.
_SPLIT_CODES = (2, 3)


class NoResponse(Exception):
    """A request got no answer in time (after retries); raised by the links."""


class ModbusDriverBase:
    """The read loop every Modbus driver shares (satisfies ``drivers.contract.Driver``).

    A subclass opens its link in ``connect`` and fills ``_reads`` (table -> coroutine
    function taking ``(address, count=, device_id=)`` and the response attribute).
    ``read`` never raises for a device or link fault: faults become bad readings.
    """

    bus: str | None = None
    """The shared link this driver's requests go through (``serial:/dev/ttyUSB0``,
    ``rtu-tcp:host:port``); None when it has a connection of its own."""

    def __init__(self, device: ModbusDevice, where_: str, learned: Learned | None = None) -> None:
        self.device = device
        self.name = device.name
        self.where = where_
        self._timeout_s = device.timeout_ms / 1000
        self._reads: dict[Table, tuple[Any, str]] = {}
        self._cycle = 0
        self._silent = False
        """The device stopped answering: the next connect asks it once before it counts."""
        self.check_after_silence = True
        """Set False for tools that talk to many unit ids through one driver (scan)."""
        self.stats = LinkStats()
        self.learned = learned
        """What was learned about the device's map (None: the driver does not split)."""
        if device.on_illegal_address is OnIllegalAddress.FAIL:
            self.learned = None
        elif learned is None:
            self.learned = Learned.load(device, None)
        self._tag_names = tuple(full_name(device.name + "/", t.name) for t in device.tags)
        self._tags = {t.name: t for t in device.tags}
        # One request at a time on this driver: a write (and its read-back) never
        # interleaves with a poll cycle's requests.
        self._io = asyncio.Lock()
        self._given: ReadPlan | None = None
        self._own = False
        self._plan: ReadPlan | None = None
        self._plan_version = -1

    @property
    def connected(self) -> bool:
        raise NotImplementedError

    def _adapted(self, plan: ReadPlan) -> ReadPlan:
        """The plan to read: ``plan`` itself, or, once something was learned, the device's
        plan compiled again around the learned barriers (cached until more is learned).
        Only a plan of this driver's own device learns (tools may pass others)."""
        if plan is not self._given:
            self._given, self._plan_version = plan, -1
            self._own = plan.device == self.name and plan.tag_names == self._tag_names
            self.stats.plan_requests = len(plan.requests)
        learned = self.learned
        if learned is None or not self._own or not learned.barriers:
            return plan
        if learned.version != self._plan_version:
            self._plan_version = learned.version
            self._plan = compile_plan(self.device, learned.barriers)
            if plan.unit_id != self._plan.unit_id:
                self._plan = dataclasses.replace(self._plan, unit_id=plan.unit_id)
            self.stats.plan_requests = len(self._plan.requests)
            self.stats.learned = learned.lines()
        assert self._plan is not None
        return self._plan

    def reload_learned(self) -> None:
        """Read the learned file again (after ``edgegw read --relearn`` deleted it)."""
        if self.learned is not None and self.learned.path is not None:
            self.learned = Learned.load(self.device, self.learned.path)
            self.stats.learned = self.learned.lines()
            self._given, self._plan_version = None, -1

    async def connect(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    def _no_response(self, exc: BaseException) -> str:
        """Why a request failed without an answer; the subclass also drops its link."""
        raise NotImplementedError

    def _tid(self) -> int | None:
        """The transaction id of the request just answered (None: the link has none)."""
        return None

    async def _check_answers(self) -> None:
        """After the device went silent, ``connect`` asks it once (one register or bit of
        its first tag): an answer, even an exception, means it is back. Otherwise
        ConnectError, so the caller's backoff keeps growing instead of restarting at
        each successful connect to a device that still does not answer."""
        if not (self._silent and self.check_after_silence):
            self._silent = False
            return
        tag = self.device.tags[0]
        call, _ = self._reads[tag.table]
        try:
            await call(tag.address, count=1, device_id=self.device.unit_id)
        except Exception as exc:  # any transport-level error: not back yet
            why = self._no_response(exc)
            unit = self.device.unit_id
            raise ConnectError(
                f"{self.where} is open but unit {unit} (device {self.name!r}) does not answer: "
                f"{why}"
            ) from None
        self._silent = False

    async def read(self, plan: ReadPlan) -> Batch:
        """Read the requests due at this cycle (all of them at the first)."""
        cycle = self._cycle
        self._cycle = cycle + 1
        plan = self._adapted(plan)
        async with self._io:
            return await self._read(plan, plan.due(cycle), None)

    # -- writes (drivers.contract.Writer) ------------------------------------------------

    def _call(self, method: str) -> Any:
        """The client's ``method`` as this driver sends requests (delay, bus lock)."""
        raise NotImplementedError

    def _tag(self, name: str) -> ModbusTag:
        tag = self._tags.get(name)
        if tag is None:
            raise ValueRejected(f"device {self.name!r} has no tag {name!r}")
        return tag

    async def _exchange(self, doing: str, method: str, *args: Any, **kw: Any) -> Any:
        """One request outside the read plan; link faults raise ConnectError, an
        exception answer DriverError, both naming the device's own words."""
        if not self.connected:
            raise ConnectError(f"not connected to {self.where}")
        self.stats.requests += 1
        try:
            rsp = await self._call(method)(*args, device_id=self.device.unit_id, **kw)
            count = kw.get("count") if method.startswith("read_") else None
            bad = reply_mismatch(rsp, FUNCTIONS[method], count, self.device.unit_id, self._tid())
            if bad is not None:
                raise ReplyMismatch(bad)
        except Exception as exc:  # every transport-level error: the link is not trusted
            why = self._no_response(exc)
            if self._silent:
                self.stats.timeouts += 1
            else:
                self.stats.link_errors += 1
            raise ConnectError(f"{why} {doing} on {self.where}") from None
        except asyncio.CancelledError:
            self._no_response(asyncio.CancelledError())  # the answer may still come
            raise
        if rsp.isError():
            code = rsp.exception_code
            self.stats.exceptions[code] = self.stats.exceptions.get(code, 0) + 1
            name = EXCEPTION_NAMES.get(code, "unknown exception")
            raise DriverError(f"modbus exception {code} ({name}) {doing}")
        self.stats.last_ok_ns = time.time_ns()
        return rsp

    async def read_tag(self, name: str) -> Value:
        """Read one tag now (its own request), decoded as a poll would."""
        tag = self._tag(name)
        bits = TABLES[tag.table].bits
        count = 1 if bits or tag.bit is not None else tag.registers
        method, attr = READS[tag.table]
        async with self._io:
            rsp = await self._exchange(f"reading {tag.name}", method, tag.address, count=count)
        values = list(getattr(rsp, attr))[:count]
        try:
            return decode_value(tag, self.device, values)
        except DecodeError as exc:
            self.stats.decode_errors += 1
            raise DriverError(f"cannot decode {tag.name}: {exc}") from None

    async def write(self, name: str, value: Value) -> None:
        """Write one holding register tag or coil, encoded as the tag is read."""
        tag = self._tag(name)
        if tag.table not in (Table.HOLDING, Table.COIL):
            raise ValueRejected(f"tag {tag.name!r} is in the read-only {tag.table.value} table")
        if isinstance(value, str) and tag.length is not None and len(value) > tag.length:
            raise ValueRejected(f"{len(value)} characters; tag {tag.name!r} holds {tag.length}")
        try:
            raw = encode_value(tag, self.device, value)
        except ValueError as exc:
            raise ValueRejected(str(exc)) from None
        multiple = self.device.write_functions is WriteFunctions.MULTIPLE
        doing = f"writing {tag.name} ({tag.table.value} {tag.address})"
        async with self._io:
            if tag.table is Table.COIL:
                if multiple:
                    await self._exchange(doing, "write_coils", tag.address, [bool(raw[0])])
                else:
                    await self._exchange(doing, "write_coil", tag.address, bool(raw[0]))
            elif tag.type is DataType.BOOL and tag.bit is not None:
                mask = 1 << tag.bit  # function 22: only this bit changes, in the device
                await self._exchange(
                    doing,
                    "mask_write_register",
                    address=tag.address,
                    and_mask=0xFFFF ^ mask,
                    or_mask=mask if value else 0,
                )
            elif len(raw) == 1 and not multiple:
                await self._exchange(doing, "write_register", tag.address, int(raw[0]))
            else:
                await self._exchange(doing, "write_registers", tag.address, [int(r) for r in raw])

    async def read_raw(self, plan: ReadPlan) -> tuple[Batch, dict[str, RawValues | None]]:
        """Opt-in capability for tools (``edgegw read``): read every request and also
        return each tag's raw registers (or bits); None for a tag whose request failed."""
        blocks: list[tuple[Request, Sequence[Any]]] = []
        plan = self._adapted(plan)
        batch = await self._read(plan, plan.requests, blocks)
        raw: dict[str, RawValues | None] = dict.fromkeys(plan.tag_names)
        for req, values in blocks:
            for name, (offset, n) in zip(req.tags, req.spans, strict=True):
                raw[name] = list(values[offset : offset + n])
        return batch, raw

    async def _read(
        self,
        plan: ReadPlan,
        requests: tuple[Request, ...],
        blocks: list[tuple[Request, Sequence[Any]]] | None,
    ) -> Batch:
        batch = Batch(self.name)
        out = batch.readings
        unit = plan.unit_id
        stats = self.stats
        learned = self.learned if self._own else None
        before = learned.version if learned is not None else 0
        todo = list(reversed(requests))  # a stack: a split request's halves go on top
        # id(half of a split request) -> [barrier, halves not yet read, both answered]
        splits: dict[int, list[Any]] = {}
        while todo:
            req = todo.pop()
            if not self.connected:
                self._fail_rest(batch, [req, *reversed(todo)], f"not connected to {self.where}")
                break
            call, attr = self._reads[req.table]
            stats.requests += 1
            try:
                rsp = await call(req.address, count=req.count, device_id=unit)
                bad = reply_mismatch(rsp, _FC[req.table], req.count, unit, self._tid())
                if bad is not None:
                    raise ReplyMismatch(bad)  # never data: the link is dropped, resynced
            except Exception as exc:  # every transport-level error (uvloop: RuntimeError)
                why = self._no_response(exc)
                if self._silent:
                    stats.timeouts += 1
                else:
                    stats.link_errors += 1
                reason = f"{why} reading {req.label} from {self.where}"
                self._fail_rest(batch, [req, *reversed(todo)], reason)
                break
            except asyncio.CancelledError:
                self._no_response(asyncio.CancelledError())  # the answer may still come
                raise
            ts = time.time_ns()
            if rsp.isError():
                code = rsp.exception_code
                stats.exceptions[code] = stats.exceptions.get(code, 0) + 1
                if splits:
                    _settle(splits, req, False, learned)
                if learned is not None and code in _SPLIT_CODES:
                    if len(req.tags) > 1:
                        # Bisect: read both halves now. Only a split whose halves are
                        # both answered proves the device refuses what lies between them.
                        left, right, barrier = split_request(self.device, req)
                        todo += (right, left)
                        splits[id(left)] = splits[id(right)] = [barrier, 2, True]
                        stats.splits += 1
                        continue
                    name = req.tags[0].split("/", 1)[1]
                    learned.add_refused(
                        name, code, (req.table, req.address, req.address + req.count)
                    )
                reason = self._exception_reason(code, req)
                stats.last_exception = reason
                out += _bad(req.tags, ts, _BAD_DEVICE, reason)
                batch.error = batch.error or reason
                continue
            stats.last_ok_ns = ts
            if splits:
                _settle(splits, req, True, learned)
            raw = getattr(rsp, "raw", None)  # pdu.py: the register bytes as sent
            try:
                if raw is not None:
                    out += req.decoder.decode_bytes(raw, ts)  # type: ignore[union-attr]
                else:
                    out += req.decoder.decode(getattr(rsp, attr), ts)
            except DecodeError as exc:
                stats.decode_errors += 1
                reason = f"cannot decode {req.label}: {exc}"
                out += _bad(req.tags, ts, _BAD_CONFIG, reason)
                batch.error = batch.error or reason
                continue
            if blocks is not None:
                blocks.append((req, getattr(rsp, attr)))
        if learned is not None and learned.version != before:
            await self._learned_more(plan)
        return batch

    async def _learned_more(self, plan: ReadPlan) -> None:
        """Something new was learned this cycle: save it, and say what changed once."""
        learned = self.learned
        assert learned is not None
        if not await learned.save_off_loop():  # forgotten meanwhile (read --relearn)
            self.stats.learned, self.stats.plan_requests = [], len(plan.requests)
            return
        adapted = self._adapted(plan)
        log.warning(
            "modbus %s: the device refuses some addresses; the plan now has %d request(s): %s",
            self.name,
            len(adapted.requests),
            "; ".join(learned.lines()),
        )
        self.stats.learned = learned.lines()
        self.stats.plan_requests = len(adapted.requests)

    def _exception_reason(self, code: int, req: Request) -> str:
        name = EXCEPTION_NAMES.get(code, "unknown exception")
        reason = f"modbus exception {code} ({name}) reading {req.label}"
        if code == 2 and req.unused and self.learned is None:
            reason += (
                f"; the request also reads {req.unused} unused address(es) to bridge gaps: "
                "if the device rejects unmapped addresses, set max_gap: 0"
            )
        return reason

    def _fail_rest(self, batch: Batch, requests: Sequence[Request], reason: str) -> None:
        ts = time.time_ns()
        for req in requests:
            batch.readings += _bad(req.tags, ts, _BAD_COMM, reason)
        batch.error = reason


class ModbusTcpDriver(ModbusDriverBase):
    """Reads compiled plans from one Modbus TCP device over a connection of its own
    (``tcp.TcpLink``, not pymodbus's client: a quarter of its CPU per request).

    The gateway reconnects with backoff. A timeout or a lost link closes the connection,
    because a late response could otherwise be taken for the answer to the next request.
    ``retries`` re-sends a request that timed out (same transaction id) before giving up.
    """

    device: ModbusTcpDevice

    def __init__(self, device: ModbusTcpDevice, learned: Learned | None = None) -> None:
        super().__init__(device, where(device.host, device.port), learned)
        self._client: TcpLink | None = None
        self._heard: list[tuple[int, int]] = []  # what arrived instead of answers
        self._delay_s = device.inter_request_delay_ms / 1000
        self._quiet_until = 0.0

    def __repr__(self) -> str:
        return f"ModbusTcpDriver({self.name!r}, {self.where}, unit {self.device.unit_id})"

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    async def connect(self) -> None:
        """Open the TCP connection; raises ``ConnectError`` naming host:port and why."""
        await self.close()
        self._heard.clear()
        try:
            client = await TcpLink.connect(
                self.device.host,
                self.device.port,
                self._timeout_s,
                self.device.retries,  # 0: timeout_ms is the real time per request
                self._heard,
            )
        except OSError as exc:  # TimeoutError among them
            reason = self._unreachable(exc)
            raise ConnectError(
                f"cannot connect to {self.where} (device {self.name!r}): {reason}"
            ) from None
        self._client = client
        self._reads = {
            t: (self._delayed(getattr(client, m)) if self._delay_s else getattr(client, m), a)
            for t, (m, a) in READS.items()
        }
        await self._check_answers()

    def _unreachable(self, exc: OSError) -> str:
        if isinstance(exc, TimeoutError):
            return f"no answer within {self.device.timeout_ms} ms"
        if isinstance(exc, socket.gaierror):
            return f"cannot resolve host name {self.device.host!r} ({exc.strerror})"
        # e.g. "Connection refused", "No route to host"
        return os.strerror(exc.errno) if exc.errno else str(exc)

    def _delayed(self, call: Any) -> Any:
        """``call`` after the device's inter-request delay of quiet on the connection."""
        loop = asyncio.get_running_loop()

        async def delayed(*args: Any, **kw: Any) -> Any:
            wait = self._quiet_until - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                return await call(*args, **kw)
            finally:
                self._quiet_until = loop.time() + self._delay_s

        return delayed

    def _call(self, method: str) -> Any:
        assert self._client is not None
        call = getattr(self._client, method)
        return self._delayed(call) if self._delay_s else call

    def _tid(self) -> int | None:
        client = self._client
        return client.tid if client is not None else None

    def _skipped(self) -> str | None:
        """What arrived instead of the answer the request waited for, if anything."""
        tid, unit = self._tid(), self.device.unit_id
        for got_tid, got_unit in reversed(self._heard):
            if got_tid == -1:
                return f"bytes that are not a Modbus TCP frame arrived (protocol id {got_unit})"
            if got_tid == -2:
                return f"an incomplete frame arrived ({got_unit} bytes)"
            if tid is not None and got_tid != tid:
                return f"an answer with transaction id {got_tid} arrived, {tid} sent"
            if unit and got_unit != unit:
                return f"an answer from unit id {got_unit} arrived, {unit} asked"
        return None

    def _no_response(self, exc: BaseException) -> str:
        client = self._client
        lost = client is None or not client.connected
        skipped = self._skipped()
        self._heard.clear()
        self._drop()
        if isinstance(exc, ReplyMismatch):
            return f"mismatched response ({exc})"
        if skipped is not None and not isinstance(exc, asyncio.CancelledError):
            return (
                f"mismatched response ({skipped}; nothing else within {self.device.timeout_ms} ms)"
            )
        if isinstance(exc, LinkLost) or (lost and isinstance(exc, NoAnswer)):
            return "connection lost"
        if isinstance(exc, OSError):
            return f"link error ({exc})"
        if not isinstance(exc, NoAnswer | NoResponse):
            return f"link error ({type(exc).__name__}: {exc})"
        self._silent = True
        tries = f" ({self.device.retries + 1} attempts)" if self.device.retries else ""
        return f"no response within {self.device.timeout_ms} ms{tries}"

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()

    async def close(self) -> None:
        """Close the connection; safe to call twice."""
        client, self._client = self._client, None
        if client is not None:
            client.close()


def Driver(
    device: ModbusDevice, *, learned_file: Path | None = None, read_only: bool = False, **_: Any
) -> ModbusDriverBase:
    """The driver for ``device.protocol`` (the name every protocol package exports).

    ``learned_file``: where what the driver learns about the device's map is kept
    (``learn.py``); ``read_only``: load it but never write it (tools)."""
    learned = Learned.load(device, learned_file, read_only=read_only)
    # by protocol, not class: the daemon's devices are plain copies (gateway/plainconfig.py)
    if device.protocol == "modbus_tcp":
        return ModbusTcpDriver(device, learned)
    if device.protocol in ("modbus_rtu", "modbus_rtu_tcp"):
        from .rtu import ModbusRtuDriver

        return ModbusRtuDriver(device, learned)
    raise TypeError(f"no Modbus driver for {type(device).__name__}")
