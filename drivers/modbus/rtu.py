"""Modbus RTU drivers: on a serial port (pyserial) and RTU framing over TCP (serial device
servers such as a Moxa NPort in "TCP server" mode).

Devices on one serial port share ONE pymodbus client and ONE ``asyncio.Lock``
(``SharedLink``, from a module-level registry keyed by the port), so their requests
never interleave on the bus: a request and its answer (or its timeout) hold the lock,
plus the device's ``inter_request_delay_ms`` of quiet before the request. Devices behind
one RTU-over-TCP host:port share a link the same way (such servers often accept one
connection only, and have one bus behind them).

A device that does not answer is marked down (``connected`` turns False) without
closing the shared port, so the gateway backs off on that device alone and the bus
keeps serving the others; ``connect`` then only re-checks the port. When the port itself
fails (adapter unplugged), every device on it goes down and the first to reconnect
reopens it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import TYPE_CHECKING, Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerType

from drivers.contract import ConnectError

from .driver import READS, ModbusDriverBase, NoResponse, where
from .learn import Learned
from .links import link_key
from .pdu import ReplyMismatch
from .responses import register_fast_responses

if TYPE_CHECKING:
    from .config import ModbusRtuDevice, ModbusRtuTcpDevice

__all__ = ["ModbusRtuDriver", "SharedLink", "shared_links"]

log = logging.getLogger("edgegw.modbus")

_FOREVER = 3600.0  # pymodbus's own timeouts are disabled: ours (per device) apply
_SETTLE_S = 0.02  # quiet kept after a timeout, so a late answer is not the next one's


class SharedLink:
    """One client and one lock for every device on one bus."""

    def __init__(self, key: str, settings: tuple[Any, ...], loop: asyncio.AbstractEventLoop):
        self.key = key
        self.settings = settings
        self.loop = loop
        self.lock = asyncio.Lock()
        self.client: Any = None
        self.users: dict[int, str] = {}
        """Driver id -> device name of the drivers on this link (a reload may briefly
        hold two drivers of one device)."""
        self.quiet_until = 0.0
        self.requests = 0

    @property
    def open(self) -> bool:
        return self.client is not None and self.client.connected

    def __repr__(self) -> str:
        return f"SharedLink({self.key!r}, users={self.names})"

    @property
    def names(self) -> list[str]:
        return sorted(set(self.users.values()))

    async def ensure_open(self, device: ModbusRtuDevice | ModbusRtuTcpDevice) -> None:
        """Open the port (or connection) unless it is; ConnectError says why not."""
        async with self.lock:
            if self.open:
                return
            if self.client is not None:
                self.client.close()
                self.client = None
            client = _client(device)
            timeout = device.timeout_ms / 1000
            ok = False
            with contextlib.suppress(TimeoutError):
                ok = await asyncio.wait_for(client.connect(), timeout)
            if not ok:
                client.close()
                raise ConnectError(
                    f"cannot open {_describe(device)} (device {device.name!r}): "
                    f"{await _why_closed(device, timeout)}"
                )
            self.client = client
            log.info("modbus: opened %s for %s", _describe(device), ", ".join(self.names))

    async def request(
        self,
        method: str,
        address: int,
        count: int,
        unit: int,
        *,
        timeout_s: float,
        delay_s: float,
        retries: int,
    ) -> Any:
        """One read request under the bus lock, after ``delay_s`` of quiet, re-sent up to
        ``retries`` times on timeout. Raises NoResponse, or ConnectionError if closed."""
        return await self.call(
            method,
            (address,),
            {"count": count, "device_id": unit},
            timeout_s=timeout_s,
            delay_s=delay_s,
            retries=retries,
        )

    async def call(
        self,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        timeout_s: float,
        delay_s: float,
        retries: int,
    ) -> Any:
        """Any client request (reads, and writes, which are idempotent: the same value
        again) under the bus lock, as ``request`` describes."""
        loop = self.loop
        async with self.lock:
            for attempt in range(retries + 1):
                client = self.client
                if client is None or not client.connected:
                    raise ConnectionError(f"{self.key} is closed")
                wait = self.quiet_until + delay_s - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                self.requests += 1
                try:
                    return await asyncio.wait_for(
                        getattr(client, method)(*args, **kwargs), timeout_s
                    )
                except TimeoutError:
                    await asyncio.sleep(_SETTLE_S)
                    if attempt == retries:
                        tries = f" ({retries + 1} attempts)" if retries else ""
                        why = f"no response within {timeout_s * 1000:.0f} ms{tries}"
                        raise NoResponse(why) from None
                finally:
                    self.quiet_until = loop.time()
        raise AssertionError("unreachable")

    def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            client.close()


_LINKS: dict[str, SharedLink] = {}


def shared_links() -> dict[str, SharedLink]:
    """The links open in this process, by key (for status and tests)."""
    return dict(_LINKS)


def _settings(device: ModbusRtuDevice | ModbusRtuTcpDevice) -> tuple[Any, ...]:
    if device.protocol == "modbus_rtu":
        return (device.baudrate, device.parity, device.stopbits, device.bytesize)
    return ()


def _acquire(device: ModbusRtuDevice | ModbusRtuTcpDevice, owner: object) -> SharedLink:
    key = link_key(device)
    assert key is not None
    loop = asyncio.get_running_loop()
    link = _LINKS.get(key)
    if link is not None and (link.loop is not loop or link.loop.is_closed()):
        link.close()  # left over from another event loop (tests, reloads)
        link = None
    if link is None:
        link = _LINKS[key] = SharedLink(key, _settings(device), loop)
    elif link.settings != _settings(device):
        assert device.protocol == "modbus_rtu"
        raise ConnectError(
            f"device {device.name!r} wants {device.port} at {device.line}, but "
            f"{', '.join(link.names)} use it with other settings; devices on one "
            "bus share its line settings"
        )
    link.users[id(owner)] = device.name
    return link


def _release(link: SharedLink, owner: object) -> None:
    link.users.pop(id(owner), None)
    if not link.users:
        link.close()
        if _LINKS.get(link.key) is link:
            del _LINKS[link.key]


def _describe(device: ModbusRtuDevice | ModbusRtuTcpDevice) -> str:
    if device.protocol == "modbus_rtu":
        return f"{device.port} ({device.line})"
    return f"RTU over TCP {where(device.host, device.port)}"


def _client(device: ModbusRtuDevice | ModbusRtuTcpDevice) -> Any:
    common: dict[str, Any] = {
        "name": device.name,
        "timeout": _FOREVER,
        "retries": 0,
        "reconnect_delay": 0,  # 0 disables pymodbus's automatic reconnect
        "reconnect_delay_max": 0,
    }
    client: Any
    if device.protocol == "modbus_rtu_tcp":
        client = AsyncModbusTcpClient(
            device.host, port=device.port, framer=FramerType.RTU, **common
        )
        register_fast_responses(client)
        return client
    try:
        client = AsyncModbusSerialClient(
            device.port,
            framer=FramerType.RTU,
            baudrate=device.baudrate,
            bytesize=device.bytesize,
            parity=device.parity.value,
            stopbits=device.stopbits,
            **common,
        )
    except RuntimeError as exc:  # pymodbus: "Serial client requires pyserial"
        if "pyserial" not in str(exc):
            raise
        raise ConnectError(f"cannot open {device.port}: pyserial is not installed") from None
    register_fast_responses(client)
    return client


async def _why_closed(device: ModbusRtuDevice | ModbusRtuTcpDevice, timeout: float) -> str:
    """The operating system's reason a port or connection did not open."""
    if device.protocol == "modbus_rtu_tcp":
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(device.host, device.port), timeout
            )
        except TimeoutError:
            return f"no answer within {device.timeout_ms} ms"
        except OSError as exc:
            return os.strerror(exc.errno) if exc.errno else str(exc)
        writer.close()
        return "connection failed, but a second attempt succeeded (connection limit?)"
    path = device.port
    if not os.path.exists(path):
        return "no such serial port (is the adapter plugged in? see ls /dev/serial/by-id/)"
    if not os.access(path, os.R_OK | os.W_OK):
        return "permission denied (add the user to group 'dialout')"
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        return os.strerror(exc.errno) if exc.errno else str(exc)
    os.close(fd)
    return "the port opens but pyserial refused it (in use by another program?)"


class ModbusRtuDriver(ModbusDriverBase):
    """One RTU device on a shared link (satisfies ``drivers.contract.Driver``)."""

    device: ModbusRtuDevice | ModbusRtuTcpDevice

    def __init__(
        self, device: ModbusRtuDevice | ModbusRtuTcpDevice, learned: Learned | None = None
    ) -> None:
        super().__init__(device, _describe(device), learned)
        self.bus = link_key(device)
        self._link: SharedLink | None = None
        self._up = False
        self._delay_s = device.inter_request_delay_ms / 1000

    def __repr__(self) -> str:
        return f"ModbusRtuDriver({self.name!r}, {self.where}, unit {self.device.unit_id})"

    @property
    def connected(self) -> bool:
        return self._up and self._link is not None and self._link.open

    async def connect(self) -> None:
        """Join the shared link, opening it if needed; ConnectError says why not."""
        if self._link is None:
            self._link = _acquire(self.device, self)
        try:
            await self._link.ensure_open(self.device)
        except ConnectError:
            self._up = False
            _release(self._link, self)
            self._link = None
            raise
        self._up = True
        link = self._link
        opts = {
            "timeout_s": self._timeout_s,
            "delay_s": self._delay_s,
            "retries": self.device.retries,
        }

        def bound(method: str) -> Any:
            async def call(address: int, *, count: int, device_id: int) -> Any:
                return await link.request(method, address, count, device_id, **opts)

            return call

        self._reads = {t: (bound(m), a) for t, (m, a) in READS.items()}
        try:
            await self._check_answers()
        except ConnectError:
            self._up = False
            raise

    def _call(self, method: str) -> Any:
        link = self._link
        assert link is not None
        opts = {
            "timeout_s": self._timeout_s,
            "delay_s": self._delay_s,
            "retries": self.device.retries,
        }

        async def call(*args: Any, **kw: Any) -> Any:
            return await link.call(method, args, kw, **opts)

        return call

    def _no_response(self, exc: BaseException) -> str:
        # This device is down; the bus stays open for the others.
        self._up = False
        if isinstance(exc, ReplyMismatch):
            return f"mismatched response ({exc})"
        if isinstance(exc, NoResponse):
            self._silent = True
            return str(exc)
        if isinstance(exc, ModbusException):
            return f"bad response ({exc})"
        if isinstance(exc, ConnectionError) or not (self._link and self._link.open):
            return "port closed" if self.device.protocol == "modbus_rtu" else "link lost"
        return f"link error ({type(exc).__name__}: {exc})"

    async def close(self) -> None:
        """Leave the shared link (closed when its last device leaves); safe twice."""
        self._up = False
        link, self._link = self._link, None
        if link is not None:
            _release(link, self)
