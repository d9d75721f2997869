"""Modbus TCP driver: one connection to one device, one compiled plan per read."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from drivers.contract import Batch, ConnectError, Quality, Reading

from .config import ModbusTcpDevice
from .decode import DecodeError
from .plan import ReadPlan, Request
from .types import Table

__all__ = ["EXCEPTION_NAMES", "ModbusTcpDriver"]

_BAD_COMM = int(Quality.BAD_COMM)
_BAD_DEVICE = int(Quality.BAD_DEVICE)
_BAD_CONFIG = int(Quality.BAD_CONFIG)

# table -> (client method, response attribute holding the values)
_READS: dict[Table, tuple[str, str]] = {
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


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bad(tags: tuple[str, ...], ts: int, quality: int, reason: str) -> list[Reading]:
    return [(t, ts, None, quality, reason) for t in tags]


class ModbusTcpDriver:
    """Reads compiled plans from one Modbus TCP device (satisfies ``drivers.contract.Driver``).

    pymodbus's own reconnect is disabled: the gateway reconnects with backoff. A timeout
    or a lost link closes the connection, because a late response could otherwise be
    taken for the answer to the next request.
    """

    def __init__(self, device: ModbusTcpDevice) -> None:
        self.device = device
        self.name = device.name
        self.where = _where(device.host, device.port)
        self._timeout_s = device.timeout_ms / 1000
        self._client: AsyncModbusTcpClient | None = None
        self._reads: dict[Table, tuple[Any, str]] = {}

    def __repr__(self) -> str:
        return f"ModbusTcpDriver({self.name!r}, {self.where}, unit {self.device.unit_id})"

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    async def connect(self) -> None:
        """Open the TCP connection; raises ``ConnectError`` naming host:port and why."""
        await self.close()
        client = AsyncModbusTcpClient(
            self.device.host,
            port=self.device.port,
            name=self.name,
            timeout=self._timeout_s,
            retries=0,  # one attempt: timeout_ms is then the real time per request
            reconnect_delay=0,  # 0 disables pymodbus's automatic reconnect
            reconnect_delay_max=0,
        )
        started = time.monotonic()
        if not await client.connect():
            client.close()
            reason = await self._why_unreachable(time.monotonic() - started)
            raise ConnectError(f"cannot connect to {self.where} (device {self.name!r}): {reason}")
        self._client = client
        self._reads = {t: (getattr(client, m), attr) for t, (m, attr) in _READS.items()}

    async def _why_unreachable(self, elapsed: float) -> str:
        # pymodbus only returns False; one plain connect attempt recovers the OS's reason.
        ms = self.device.timeout_ms
        if elapsed >= 0.9 * self._timeout_s:
            return f"no answer within {ms} ms"
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(self.device.host, self.device.port),
                self._timeout_s - elapsed,
            )
        except TimeoutError:
            return f"no answer within {ms} ms"
        except socket.gaierror as exc:
            return f"cannot resolve host name {self.device.host!r} ({exc.strerror})"
        except OSError as exc:  # e.g. "Connection refused", "No route to host"
            return os.strerror(exc.errno) if exc.errno else str(exc)
        writer.close()
        return "connection failed, but a second attempt succeeded (connection limit?)"

    async def read(self, plan: ReadPlan) -> Batch:
        """One pymodbus call per request; device and link faults become bad readings."""
        batch = Batch(self.name)
        out = batch.readings
        unit = plan.unit_id
        requests = plan.requests
        for i, req in enumerate(requests):
            client = self._client
            if client is None or not client.connected:
                reason = f"not connected to {self.where}"
                self._fail_rest(batch, requests[i:], reason)
                break
            call, attr = self._reads[req.table]
            try:
                rsp = await call(req.address, count=req.count, device_id=unit)
            except ModbusException as exc:
                # pymodbus raises one exception class for all three; tell them apart.
                text = str(exc)
                if "transaction id" in text or "device id" in text:
                    why = f"mismatched response ({text})"
                elif not client.connected:
                    why = "connection lost"
                else:
                    why = f"no response within {self.device.timeout_ms} ms"
                self._drop()
                self._fail_rest(batch, requests[i:], f"{why} reading {req.label} from {self.where}")
                break
            except OSError as exc:
                self._drop()
                reason = f"link error ({exc}) reading {req.label} from {self.where}"
                self._fail_rest(batch, requests[i:], reason)
                break
            except asyncio.CancelledError:
                self._drop()  # the response may still arrive: do not reuse the link
                raise
            ts = time.time_ns()
            if rsp.isError():
                reason = self._exception_reason(rsp.exception_code, req)
                out += _bad(req.tags, ts, _BAD_DEVICE, reason)
                batch.error = batch.error or reason
                continue
            try:
                out += req.decoder.decode(getattr(rsp, attr), ts)
            except DecodeError as exc:
                reason = f"cannot decode {req.label}: {exc}"
                out += _bad(req.tags, ts, _BAD_CONFIG, reason)
                batch.error = batch.error or reason
        return batch

    def _exception_reason(self, code: int, req: Request) -> str:
        name = EXCEPTION_NAMES.get(code, "unknown exception")
        reason = f"modbus exception {code} ({name}) reading {req.label}"
        if code == 2 and req.unused:
            reason += (
                f"; the request also reads {req.unused} unused address(es) to bridge gaps: "
                "if the device rejects unmapped addresses, set max_gap: 0"
            )
        return reason

    def _fail_rest(self, batch: Batch, requests: tuple[Request, ...], reason: str) -> None:
        ts = time.time_ns()
        for req in requests:
            batch.readings += _bad(req.tags, ts, _BAD_COMM, reason)
        batch.error = reason

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()

    async def close(self) -> None:
        """Close the connection; safe to call twice."""
        client, self._client = self._client, None
        if client is not None:
            client.close()


Driver = ModbusTcpDriver  # the name every protocol package uses (see drivers/contract.py)
