"""The downlink: every message on ``<prefix>/<gateway id>/command``, from the broker to a
signed result.

Order, as the receiver does it upstream: size, then the COSE envelope walked by its heads
(``parse1``), the key looked up among the command keys of the config, the signature
checked with the topic as external AAD, and only then the payload decoded (strictly) and
interpreted. Then: the gateway id, the command id (a re-delivered command gets its stored
result again, never a second execution; another command under a seen id is refused),
freshness, the key's scope, the tag's write block, the value, the pace. A command that
passes is recorded as executing (durably) before the broker is acknowledged and before
the device is touched.

Every command ends in one signed ``command_result`` (urgent, through the outbox) and one
audit record. What anyone on the broker can send without a trusted key (oversize,
malformed, unknown key, bad signature) is audited and answered too, but at a bounded
pace: the first of each reason at once, then summaries (gateway/digest.py), so a flood
cannot fill the audit log or the outbox.

Beyond the queue (QUEUE messages waiting), a message is checked as far as its signature
on arrival, within a budget (OVERFLOW_CHECKS_PER_S, bursts up to BUSY_MAX), so that a
flood costs the event loop little: a genuine command is answered ``refused`` [``busy``]
(recorded under its id, audited, sealed: the platform hears, and knows it did not run);
anything else, or what arrives past the budget, is dropped with a digested audit record
(``queue_full``). A bug while handling a message still answers it: ``failed``
[``internal_error``], audited, logged with the traceback.

Writes run in tasks of their own, one device at a time per device (a dead device delays
only its own commands); the drivers serialise them with their reads (and RTU bus locks
hold). A config push runs alone: it waits for running writes, and writes wait for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from drivers.contract import ConnectError, DriverError, ValueRejected
from security.cose import BadSignature, CoseError, parse1

from ..digest import Digest
from .policy import (
    Refused,
    TrustedKey,
    WriteTarget,
    check_config,
    check_fresh,
    check_write,
    trusted_keys,
)
from .state import FILE, CommandState, Seen, StateError
from .wire import Command, CommandError, decode_command, result

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger("edgegw.downlink")

QUEUE = 256  # messages waiting to be checked; beyond it, see the module docstring
BUSY_MAX = 1024  # genuine commands beyond the queue waiting for their ``busy`` answer
OVERFLOW_CHECKS_PER_S = 100.0  # signatures checked beyond the queue (~125 us each), steady
DEVICE_TIMEOUT_S = 30.0  # one read or write of a device, at most
UNVERIFIED_RESULT_EVERY_S = 10.0  # results for commands nobody trusted: at most this often


class Writer(Protocol):
    async def read_tag(self, tag: str) -> Any: ...
    async def write(self, tag: str, value: Any) -> None: ...


ConfigPush = Callable[[Command], Awaitable[tuple[str, str | None, str | None]]]
"""Applies a config command: (outcome, reason, detail); see config_push.py."""

ZERO_DIGEST = b"\0" * 32  # the digest of a message that is not a COSE_Sign1


@dataclass(frozen=True, slots=True)
class Verified:
    """A message whose signature verified under a trusted command key."""

    payload: bytes  # the command (CBOR), not yet read
    key: TrustedKey
    digest: bytes


@dataclass(frozen=True, slots=True)
class Unverified:
    """A message that did not verify (or was not checked): ``reason`` is its code."""

    reason: str
    why: str
    digest: bytes | None


@dataclass(slots=True)
class Progress:
    """What the handling of one message has learnt so far (for an internal error)."""

    received: int
    payload: bytes = b""
    digest: bytes | None = None
    key: TrustedKey | None = None
    cmd: Command | None = None


def _once(ack: Callable[[], None]) -> Callable[[], None]:
    """An acknowledgement that is sent once however often it is called: a second PUBACK
    could acknowledge another message that reuses the packet id."""
    done = False

    def once() -> None:
        nonlocal done
        if not done:
            done = True
            ack()

    return once


class Downlink:
    """Verifies, authorises, executes and answers commands (see the module docstring)."""

    def __init__(
        self,
        cfg: Config,
        *,
        seal: Callable[[dict[str, Any]], Awaitable[int]],
        audit: Callable[[str, dict[str, Any]], None],
        writer: Callable[[str], Writer | None],
        push_config: ConfigPush | None = None,
    ) -> None:
        self.seal = seal  # seals one result (urgent, through the outbox); returns its seq
        self.audit = audit  # one audit record (synchronous: called from a worker thread)
        self.writer = writer  # device name -> its running driver, or None
        self.push_config = push_config
        self.state: CommandState | None = None
        self._recovered = False
        self._queue: asyncio.Queue[tuple[bytes, Callable[[], None]]] = asyncio.Queue(QUEUE)
        self._busy: deque[tuple[Verified, Callable[[], None], int]] = deque()
        self._busy_digests: set[bytes] = set()
        self._checks = float(BUSY_MAX)  # token bucket for signature checks beyond the queue
        self._checks_at = time.monotonic()
        self._device_locks: dict[str, asyncio.Lock] = {}
        self._config_lock = asyncio.Lock()
        self._running: set[asyncio.Task[None]] = set()
        self._writing: set[asyncio.Task[Any]] = set()  # writes past the config gate
        self._unverified = Digest(self._audit_unverified, first_s=60, max_s=3600)
        self._last_unverified_result: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.subscription_ok: bool | None = None
        self.update(cfg)

    # -- config ----------------------------------------------------------------------

    def update(self, cfg: Config) -> None:
        """Take a (re)loaded config: keys, scopes, tags, limits."""
        self.cfg = cfg
        self.gw_id = cfg.gateway.id
        self.topic = cfg.topic("command")
        self.result_topic = cfg.topic("command_result")
        self._aad = self.topic.encode()
        self.keys: dict[bytes, TrustedKey] = trusted_keys(cfg.commands)
        if cfg.commands.enabled and self.state is None:
            try:
                self.state = CommandState(cfg.state_dir / FILE)
            except StateError as exc:  # acquisition goes on; commands cannot
                log.error("commands are off: %s", exc)

    @property
    def enabled(self) -> bool:
        """Commands are configured and their state is usable: subscribe."""
        return self.cfg.commands.enabled and self.state is not None

    @property
    def session_expiry_s(self) -> int:
        return self.cfg.commands.session_expiry_s

    # -- the forwarder's side (forwarder.CommandInlet) --------------------------------

    def offer(self, topic: str, payload: bytes, ack: Callable[[], None]) -> None:
        """A message from the broker (on the loop; never blocks)."""
        ack = _once(ack)
        if topic != self.topic:
            ack()  # not ours (a broker quirk): nothing to do with it
            return
        try:
            self._queue.put_nowait((payload, ack))
        except asyncio.QueueFull:
            self._overflow(payload, ack)

    def _overflow(self, payload: bytes, ack: Callable[[], None]) -> None:
        """The queue is full: a genuine command waits for its ``busy`` answer; the rest is
        dropped (a flood: the broker must not stall our session for it)."""
        received = time.time_ns()
        auth = self._authenticate(payload, budget=True)
        if isinstance(auth, Verified) and auth.digest in self._busy_digests:
            ack()  # a copy of one that waits for its answer
            self._count("repeated")
            return
        if isinstance(auth, Verified) and len(self._busy) < BUSY_MAX:
            self._busy.append((auth, ack, received))  # acknowledged once answered
            self._busy_digests.add(auth.digest)
            return
        ack()
        self._count("dropped_queue_full")
        if isinstance(auth, Verified):
            log.error(
                "SECURITY: the command queue is full: dropped a command signed by %r (%d more "
                "wait to be answered)",
                auth.key.name,
                BUSY_MAX,
            )
            self._unverified.note("queue_full", "verified, no room to answer it")
        else:  # the code alone: the summaries count by it
            self._unverified.note("queue_full", auth.reason)

    def _spend_check(self) -> bool:
        now = time.monotonic()
        self._checks = min(
            float(BUSY_MAX), self._checks + (now - self._checks_at) * OVERFLOW_CHECKS_PER_S
        )
        self._checks_at = now
        if self._checks < 1:
            return False
        self._checks -= 1
        return True

    def _authenticate(self, payload: bytes, budget: bool = False) -> Verified | Unverified:
        """Size, envelope, key, signature (nothing of the payload is read). ``budget``:
        beyond the queue, where signature checks are rationed."""
        limit = self.cfg.commands.max_message_bytes
        if len(payload) > limit:
            why = f"{len(payload)} bytes > commands.max_message_bytes {limit}"
            return Unverified("oversize", why, None)
        try:
            env = parse1(payload)
        except CoseError as exc:
            return Unverified("malformed", str(exc), None)
        digest = env.signed_digest(self._aad)
        key = self.keys.get(env.kid)
        if key is None:
            why = f"kid {env.kid[:32].hex()} is not a command key of this gateway"
            return Unverified("unknown_key", why, digest)
        if budget and not self._spend_check():
            why = f"not checked: over {OVERFLOW_CHECKS_PER_S:g} signature checks a second"
            return Unverified("unchecked", why, digest)
        try:
            env.verify(key.public_key, self._aad)
        except BadSignature:
            why = f"the signature does not verify with key {key.name!r} (altered, or another topic)"
            return Unverified("bad_signature", why, digest)
        return Verified(env.payload, key, digest)

    def subscribed(self, ok: bool, why: str | None) -> None:
        if not ok and self.subscription_ok is not False:
            log.error("%s; commands cannot arrive (the broker's ACL must let us read it)", why)
        elif ok and self.subscription_ok is not True:
            log.info("listening for commands on %s", self.topic)
        self.subscription_ok = ok

    # -- running ---------------------------------------------------------------------

    async def run(self) -> None:
        """Answer what a crash left open, then handle commands until cancelled.
        Restartable: the recovery runs once per process (a restart must not take a
        command still executing for one a crash interrupted)."""
        if not self._recovered:
            await self._recover()
            self._recovered = True
        try:
            while True:
                if self._busy:  # beyond the queue: answered first, the platform waits
                    v, ack, received = self._busy.popleft()
                    p = Progress(received, digest=v.digest, key=v.key)
                    try:
                        await self._guarded(self._handle_verified(v, ack, p, busy=True), ack, p)
                    finally:
                        self._busy_digests.discard(v.digest)
                    continue
                payload, ack = await self._queue.get()
                p = Progress(time.time_ns(), payload)
                await self._guarded(self._handle(payload, ack, p), ack, p)
        finally:
            self._unverified.flush()

    async def _guarded(
        self, handling: Awaitable[None], ack: Callable[[], None], p: Progress
    ) -> None:
        """A bug must not stop the downlink, nor leave the command unanswered."""
        try:
            await handling
        except Exception as exc:
            log.exception("downlink: unexpected error handling a command")
            self._count("errors")
            try:
                await self._internal_error(p, exc)
            except Exception:
                log.exception("downlink: cannot answer the command that failed")
            ack()

    async def _internal_error(self, p: Progress, exc: Exception) -> None:
        """Answer a message whose handling raised: ``failed`` [``internal_error``],
        recorded under its id when it was read (so it is not run later), audited, sealed."""
        if p.digest is None:  # which message this answers, if that much can be told
            try:
                p.digest = parse1(p.payload).signed_digest(self._aad)
            except Exception:
                log.warning("the command that failed is not a COSE_Sign1: its digest is zeros")
        res = result(
            digest=p.digest or ZERO_DIGEST,
            kid=p.key.kid if p.key else None,
            cmd=p.cmd,
            outcome="failed",
            reason="internal_error",
            detail=f"the gateway failed while handling this command ({exc!r}); it was not "
            "executed unless the result of its execution says otherwise",
            received_ns=p.received,
        )
        if p.cmd is not None and any(t.get_name() == f"command:{p.cmd.id}" for t in self._running):
            log.error("command %s executes: its own result follows", p.cmd.id)
            return None
        if p.cmd is not None and p.key is not None and self.state is not None:
            seen = await asyncio.to_thread(self.state.seen, p.cmd.id)
            if seen is None or (seen.digest == p.digest and seen.state == "executing"):
                assert p.digest is not None
                return await self._finish(p.cmd, p.key, p.digest, p.received, res)
            # the id belongs to another command, or this one has its own result already
        await asyncio.to_thread(self._audit_result, res, p.key, p.key is not None)
        await self._seal(res, None)

    async def stop(self, task: asyncio.Task[None], grace_s: float = 10.0) -> None:
        """End the consumer ``task``; let running commands finish for up to ``grace_s``
        (one cut short stays ``executing`` and is answered as interrupted at the next
        start)."""
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        running = list(self._running)
        if running:
            _, late = await asyncio.wait(running, timeout=grace_s)
            for t in late:
                t.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    async def _recover(self) -> None:
        st = self.state
        if st is None:
            return
        for cid, digest, kid, op, exp_ns, received_ns in await asyncio.to_thread(st.interrupted):
            detail = "the gateway stopped while executing this command; it is not run again " + (
                "(the write may or may not have reached the device: read the tag)"
                if op == "write"
                else "(the pushed config may be in force: check the config version)"
            )
            res = result(
                digest=digest,
                kid=kid,
                outcome="failed",
                reason="interrupted",
                detail=detail,
                received_ns=received_ns,
            )
            res["id"], res["op"] = cid, op
            await asyncio.to_thread(st.finish, cid, digest, kid, op, exp_ns, received_ns, res)
            await asyncio.to_thread(self._audit_result, res, None)
        for cid, res in await asyncio.to_thread(st.unsealed):
            await self._seal(res, cid)

    async def _handle(self, payload: bytes, ack: Callable[[], None], p: Progress) -> None:
        auth = self._authenticate(payload)
        if isinstance(auth, Unverified):
            ack()
            return await self._unverified_refusal(auth.reason, auth.why, auth.digest)
        p.digest, p.key = auth.digest, auth.key
        return await self._handle_verified(auth, ack, p)

    async def _handle_verified(
        self, v: Verified, ack: Callable[[], None], p: Progress, busy: bool = False
    ) -> None:
        """From here on the payload is read, and every outcome is recorded. ``busy``: it
        came beyond the queue; answered (once its id is known to be new) as refused."""
        key, digest, received = v.key, v.digest, p.received
        try:
            cmd = decode_command(v.payload)
        except CommandError as exc:
            ack()
            res = result(
                digest=digest,
                kid=key.kid,
                outcome="refused",
                reason="bad_payload",
                detail=f"key {key.name!r} signed a payload that is not a command: {exc}",
                received_ns=received,
            )
            log.error("SECURITY: command refused: %s", res["detail"])
            await asyncio.to_thread(self._audit_result, res, key)
            return await self._seal(res, None)
        p.cmd = cmd
        assert self.state is not None
        seen = await asyncio.to_thread(self.state.seen, cmd.id)
        if seen is not None:
            ack()
            return await self._again(cmd, key, digest, seen, received)
        try:
            if busy:
                raise Refused(
                    "busy",
                    f"the gateway's command queue was full ({QUEUE} waiting): not executed; "
                    "send it again under a new id",
                )
            target = self._check(cmd, key, received)
        except Refused as r:
            res = result(
                digest=digest,
                kid=key.kid,
                cmd=cmd,
                outcome="refused",
                reason=r.reason,
                detail=r.detail,
                received_ns=received,
            )
            await self._finish(cmd, key, digest, received, res)
            ack()
            return None
        tag = f"{target.device}/{target.tag}" if target is not None else None
        st = self.state
        await asyncio.to_thread(
            st.begin, cmd.id, digest, key.kid, cmd.op, cmd.exp_ns, received, tag
        )
        ack()  # recorded: a crash from here on is answered as interrupted, never re-run
        self._count("accepted")
        log.info("command %s (%s) from key %s accepted", cmd.id, cmd.op, key.name)
        task = asyncio.create_task(
            self._execute(cmd, key, digest, received, target), name=f"command:{cmd.id}"
        )
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return None

    def _check(self, cmd: Command, key: TrustedKey, now: int) -> WriteTarget | None:
        if cmd.gw != self.gw_id:
            raise Refused("wrong_gateway", f"the command is for {cmd.gw!r}, this is {self.gw_id!r}")
        check_fresh(cmd, now, self.cfg.commands)
        assert self.state is not None
        if cmd.op == "write":
            last = self.state.last_write_ns(cmd.args["tag"])
            return check_write(cmd, key, self.cfg, now, last)
        check_config(cmd, key, self.state.config_version())
        if self.push_config is None:
            raise Refused("not_supported", "this gateway runs without a config file to replace")
        return None

    async def _again(
        self, cmd: Command, key: TrustedKey, digest: bytes, seen: Seen, received: int
    ) -> None:
        """A command id seen before: the same command re-delivered (answered from the
        record, never executed twice), or another command reusing the id (refused)."""
        if seen.digest != digest:
            res = result(
                digest=digest,
                kid=key.kid,
                cmd=cmd,
                outcome="refused",
                reason="replayed_id",
                detail=f"command id {cmd.id!r} was already used by another command",
                received_ns=received,
            )
            log.error("SECURITY: %s (key %s)", res["detail"], key.name)
            await asyncio.to_thread(self._audit_result, res, key)
            return await self._seal(res, None)
        self._count("repeated")
        if seen.state != "finished" or seen.result is None:
            log.info("command %s delivered again while it executes: its result follows", cmd.id)
            return None
        res = dict(seen.result, again=True)
        log.info(
            "command %s delivered again: its result (%s) is sent again", cmd.id, res["outcome"]
        )
        await asyncio.to_thread(self._audit_result, res, key)
        return await self._seal(res, None)

    # -- executing -------------------------------------------------------------------

    async def _execute(
        self,
        cmd: Command,
        key: TrustedKey,
        digest: bytes,
        received: int,
        target: WriteTarget | None,
    ) -> None:
        base = {"digest": digest, "kid": key.kid, "cmd": cmd, "received_ns": received}
        try:
            if target is not None:
                res = await self._write(cmd, target, base)
            else:
                res = await self._config(cmd, base)
        except Exception as exc:  # a bug: the command still gets an answer
            log.exception("command %s failed unexpectedly", cmd.id)
            res = result(**base, outcome="failed", reason="internal_error", detail=repr(exc))
        try:
            await self._finish(cmd, key, digest, received, res)
        except Exception:
            log.exception("command %s: cannot record or seal its result", cmd.id)

    async def _write(self, cmd: Command, t: WriteTarget, base: dict[str, Any]) -> dict[str, Any]:
        while self._config_lock.locked():  # a config push runs alone
            async with self._config_lock:
                pass
        me = asyncio.current_task()
        assert me is not None
        self._writing.add(me)  # no await since the gate: a push now waits for this write
        try:
            return await self._write_device(cmd, t, base)
        finally:
            self._writing.discard(me)

    async def _write_device(
        self, cmd: Command, t: WriteTarget, base: dict[str, Any]
    ) -> dict[str, Any]:
        lock = self._device_locks.setdefault(t.device, asyncio.Lock())
        value = cmd.args["value"]
        async with lock:
            if cmd.exp_ns <= time.time_ns():  # it waited behind others
                return result(
                    **base,
                    outcome="refused",
                    reason="expired",
                    detail="the command expired while it waited for the device",
                )
            drv = self.writer(t.device)
            if drv is None:
                return result(
                    **base,
                    outcome="failed",
                    reason="device_unreachable",
                    detail=f"device {t.device!r} is not running",
                )
            before: Any = None
            try:
                try:
                    before = await asyncio.wait_for(drv.read_tag(t.tag), DEVICE_TIMEOUT_S)
                except DriverError as exc:
                    if isinstance(exc, ConnectError):
                        raise
                    before = None  # a value the device cannot give now: write anyway
                await asyncio.wait_for(drv.write(t.tag, value), DEVICE_TIMEOUT_S)
            except ValueRejected as exc:
                return result(
                    **base, outcome="refused", reason="bad_value", detail=str(exc), before=before
                )
            except ConnectError as exc:
                return result(
                    **base,
                    outcome="failed",
                    reason="device_unreachable",
                    detail=str(exc),
                    before=before,
                )
            except DriverError as exc:
                return result(
                    **base, outcome="failed", reason="device_error", detail=str(exc), before=before
                )
            except TimeoutError:
                return result(
                    **base,
                    outcome="failed",
                    reason="timeout",
                    before=before,
                    detail=f"no answer within {DEVICE_TIMEOUT_S:g} s; the write may "
                    "or may not have reached the device",
                )
            try:
                after = await asyncio.wait_for(drv.read_tag(t.tag), DEVICE_TIMEOUT_S)
            except (DriverError, TimeoutError) as exc:
                return result(
                    **base,
                    outcome="done",
                    reason="not_read_back",
                    before=before,
                    detail=f"written; reading it back failed: {exc}",
                )
        return result(**base, outcome="done", before=before, after=after)

    async def _config(self, cmd: Command, base: dict[str, Any]) -> dict[str, Any]:
        assert self.push_config is not None and self.state is not None
        async with self._config_lock:
            if self._writing:  # writes already under way finish first
                await asyncio.wait(set(self._writing))
            if cmd.exp_ns <= time.time_ns():
                return result(
                    **base,
                    outcome="refused",
                    reason="expired",
                    detail="the command expired while it waited",
                )
            outcome, reason, detail = await self.push_config(cmd)
            if outcome == "done":
                await asyncio.to_thread(self.state.set_config_version, cmd.args["version"])
        return result(**base, outcome=outcome, reason=reason, detail=detail)

    # -- answering -------------------------------------------------------------------

    async def _finish(
        self, cmd: Command, key: TrustedKey, digest: bytes, received: int, res: dict[str, Any]
    ) -> None:
        """Record the result under the command's id, audit it, seal it."""
        assert self.state is not None
        await asyncio.to_thread(
            self.state.finish, cmd.id, digest, key.kid, cmd.op, cmd.exp_ns, received, res
        )
        await asyncio.to_thread(self._audit_result, res, key)
        await self._seal(res, cmd.id)

    async def _seal(self, res: dict[str, Any], command_id: str | None) -> None:
        self._count(res["outcome"])
        log_ = log.info if res["outcome"] == "done" else log.warning
        log_(
            "command %s: %s%s%s",
            res["id"] or "(unread)",
            res["outcome"],
            f" ({res['reason']})" if res["reason"] else "",
            f": {res['detail']}" if res["detail"] else "",
        )
        delay = 0.5
        while True:
            try:
                await self.seal(res)
                break
            except Exception as exc:  # e.g. a full disk: the result must still go out
                log.error("cannot seal the result of command %s yet: %s", res["id"], exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        if command_id is not None and self.state is not None:
            await asyncio.to_thread(self.state.mark_sealed, command_id)

    async def _unverified_refusal(self, reason: str, why: str, digest: bytes | None) -> None:
        """Anyone on the broker can cause these: audited through a digest, answered at
        most every UNVERIFIED_RESULT_EVERY_S per reason."""
        self._count("unverified")
        self._unverified.note(reason, why[:200])
        now = time.monotonic()
        last = self._last_unverified_result.get(reason)
        if last is not None and now - last < UNVERIFIED_RESULT_EVERY_S:
            return
        self._last_unverified_result[reason] = now
        res = result(
            digest=digest or ZERO_DIGEST,
            outcome="refused",
            reason=reason,
            detail=why,
            received_ns=time.time_ns(),
        )
        await self._seal(res, None)

    def _audit_unverified(self, reason: str, detail: dict[str, Any]) -> None:
        if "reason" in detail:
            log.warning("command refused before verification: %s: %s", reason, detail["reason"])
            detail = {"detail": detail["reason"]}
        self.audit("command_refused", {"reason": reason, "verified": False, **detail})

    def _audit_result(
        self, res: dict[str, Any], key: TrustedKey | None, verified: bool = True
    ) -> None:
        event = {"done": "command_done", "refused": "command_refused"}.get(
            res["outcome"], "command_failed"
        )
        detail = {k: v for k, v in res.items() if v is not None and k != "received"}
        for k in ("digest", "kid"):
            if isinstance(detail.get(k), bytes):
                detail[k] = detail[k].hex()
        if key is not None:
            detail["key"] = key.name
        detail["verified"] = verified
        self.audit(event, detail)

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def close(self) -> None:
        if self.state is not None:
            self.state.close()
            self.state = None


def state_file(state_dir: Path) -> Path:
    return state_dir / FILE
