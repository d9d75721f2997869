"""`edgegw command write|config`: the platform's side of the downlink. Sign a command with
a platform command key, publish it to ``<prefix>/<gateway>/command`` (QoS 1), wait for the
gateway's signed ``command_result`` (verified from its enrolled key exactly as `edgegw
receive` verifies), print it. Exit 0 when the command was done, 1 when it was refused,
failed, rolled back or no result came in time, 2 for bad input."""

from __future__ import annotations

import argparse
import json
import logging
import queue
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from . import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, Subparsers, add_command, fail
from .broker_options import PASSWORD_EPILOG, Broker, add_broker_options, broker_from_args

log = logging.getLogger("edgegw.command")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gateway", required=True, metavar="ID", help="the gateway to command")
    p.add_argument(
        "--key",
        required=True,
        metavar="FILE",
        help="the platform command key (private, from `edgegw keys command-key`)",
    )
    p.add_argument(
        "--enrol",
        metavar="PATH",
        help="enrolled gateways, as for `edgegw receive` (directory or YAML); the result "
        "must verify under the gateway's enrolled key",
    )
    p.add_argument(
        "--pubkey",
        metavar="GATEWAY_ID=FILE",
        help="... or the gateway's root public key (PEM) alone",
    )
    add_broker_options(p, protocol=True)
    p.add_argument("--prefix", default="edgegw", help="topic prefix (default edgegw)")
    p.add_argument("--id", help="the command id (default: random); unique per command")
    p.add_argument(
        "--lifetime",
        type=float,
        default=300.0,
        metavar="S",
        help="the command expires S seconds after it is signed (default 300)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="wait at most S seconds for the result (default 60)",
    )
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")


def register(sub: Subparsers) -> None:
    s = add_command(
        sub,
        "command",
        "platform side: send a signed command to a gateway and wait for its signed result",
        "edgegw command write --gateway gw-01 --tag boiler/setpoint --value 21.5 "
        "--key ops.ed25519.pem --pubkey gw-01=gw-01.pub.pem",
    )
    s.epilog = (
        f"{s.epilog}\n\nThe gateway executes only commands signed by a key its config trusts "
        "for that operation\nand tag (commands.keys), and only on tags with a write block. "
        "Exit status: 0 done,\n1 refused / failed / rolled back / no result in time / the "
        "broker refused us, 2 bad\ninput.\n\nThe broker: --host, --port, --tls / --ca-file, "
        "--cert-file/--key-file (mutual TLS),\n--username, as for `edgegw receive`; "
        "--protocol mqtt311 for a broker without MQTT 5.\n" + PASSWORD_EPILOG
    )
    ops = s.add_subparsers(dest="command_op", required=True, metavar="OPERATION")
    p = add_command(
        ops,
        "write",
        "write one tag (it must have a write block); prints the value read back",
        "edgegw command write --gateway gw-01 --tag boiler/setpoint --value 21.5 "
        "--key ops.ed25519.pem --pubkey gw-01=gw-01.pub.pem",
    )
    _common(p)
    p.add_argument("--tag", required=True, metavar="DEVICE/TAG", help="the tag to write")
    p.add_argument(
        "--value",
        required=True,
        help="the value, as JSON: 21.5, 7, true, false, '\"text\"' (a word that is not JSON is "
        "taken as text)",
    )
    p.set_defaults(func=main)
    p = add_command(
        ops,
        "config",
        "replace the gateway's whole config; it is validated, applied, watched for health "
        "and rolled back on failure",
        "edgegw command config --gateway gw-01 --file plant.yaml --version 8 "
        "--key admin.ed25519.pem --pubkey gw-01=gw-01.pub.pem --timeout 120",
    )
    _common(p)
    p.add_argument("--file", required=True, help="the config document to send (YAML)")
    p.add_argument(
        "--version",
        required=True,
        type=int,
        help="its version: must be above the one in force on the gateway",
    )
    p.set_defaults(func=main)


def _value(text: str) -> Any:
    try:
        v = json.loads(text)
    except ValueError:
        return text
    if type(v) not in (bool, int, float, str):
        raise fail(f"--value {text!r}: give a number, true/false or text")
    return v


def main(args: argparse.Namespace) -> int:
    from security import DeviceKey, KeyFileError

    broker = broker_from_args(args)
    from ..downlink.wire import COMMAND_ID, encode_command, sign_command
    from ..receiver import EnrolmentError, Enrolments

    trust = Enrolments()
    try:
        if args.enrol:
            trust.load(args.enrol)
        if args.pubkey:
            trust.add_pubkey(args.pubkey)
    except EnrolmentError as exc:
        raise fail(str(exc)) from None
    if args.gateway not in trust:
        raise fail(
            f"gateway {args.gateway} is not enrolled: give --pubkey {args.gateway}=FILE or "
            "--enrol (the result is verified with its key)"
        )
    try:
        key = DeviceKey.load(args.key)
    except KeyFileError as exc:
        raise fail(str(exc)) from None
    cid = args.id or f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(6)}"
    if not COMMAND_ID.fullmatch(cid):
        raise fail(f"--id {cid!r}: 1..64 of [A-Za-z0-9_.:-], starting with a letter or digit")
    if args.lifetime <= 0:
        raise fail("--lifetime: must be positive")
    if args.command_op == "write":
        if "/" not in args.tag:
            raise fail(f"--tag {args.tag!r}: write DEVICE/TAG, e.g. boiler/setpoint")
        op, cargs = "write", {"tag": args.tag, "value": _value(args.value)}
    else:
        try:
            text = Path(args.file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise fail(f"{args.file}: cannot read ({exc})") from None
        if args.version < 0:
            raise fail("--version: must be >= 0")
        op, cargs = "config", {"version": args.version, "config": text}
    topic = f"{args.prefix.rstrip('/')}/{args.gateway}/command"
    payload = encode_command(gw=args.gateway, id=cid, op=op, args=cargs, lifetime_s=args.lifetime)
    message = sign_command(payload, key, topic)
    try:
        res = send_and_wait(broker, args.prefix, args.gateway, trust, topic, message, args.timeout)
    except ConnectionError as exc:
        print(f"edgegw: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if res is None:
        print(
            f"command {cid}: no result within {args.timeout:g} s. The gateway may be offline: "
            f"the broker keeps the command for its session, and it is valid for "
            f"{args.lifetime:g} s from sending (then refused as expired)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    print(json.dumps(_jsonable(res)) if args.json else describe(cid, res))
    return EXIT_OK if res["outcome"] == "done" else EXIT_FAILED


def send_and_wait(
    broker: Broker,
    prefix: str,
    gw: str,
    trust: Any,
    topic: str,
    message: bytes,
    timeout: float,
) -> dict[str, Any] | None:
    """Subscribe to the gateway's results, publish the command, return the verified
    result that answers it (by command id or signed digest), or None after ``timeout``."""
    from security.cose import parse1

    from ..downlink.wire import CommandError, decode_command
    from ..receiver import Outcome, Receiver

    env = parse1(message)
    digest = env.signed_digest(topic.encode())
    try:
        cid: str | None = decode_command(env.payload).id
    except CommandError:  # not a command (tests send such): matched by its digest alone
        cid = None
    found: queue.Queue[dict[str, Any]] = queue.Queue()

    class Sink:
        def write(self, p: Any, kid: bytes, received_ns: int) -> None:
            r = p.command_result
            if r is not None and (r["digest"] == digest or (cid and r["id"] == cid)):
                found.put(r)

        def close(self) -> None:
            pass

    rx = Receiver({gw: trust[gw].root}, prefix, Sink())
    subscribed: queue.Queue[str | None] = queue.Queue()
    acked: queue.Queue[str | None] = queue.Queue()
    client = broker.client()
    result_topic = f"{prefix.rstrip('/')}/{gw}/command_result"

    def on_connect(c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            subscribed.put(f"the broker {broker} refused the connection: {rc} ({_fix(rc)})")
        else:
            c.subscribe(result_topic, qos=1)

    def on_disconnect(c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        # before its answer (after it, the get below has what it needs and this is unread)
        maybe = "" if broker.tls else "a TLS listener reached without --tls or --ca-file, "
        subscribed.put(
            f"the broker {broker} closed the connection ({rc}) before answering: {maybe}a "
            "client certificate it does not accept (--cert-file/--key-file), or an MQTT "
            "version it does not speak (--protocol)"
        )

    def on_subscribe(c: Any, u: Any, mid: int, codes: Any, props: Any) -> None:
        bad = [rc for rc in codes if rc.is_failure]
        subscribed.put(f"the broker refused the subscription to {result_topic}" if bad else None)

    def on_message(c: Any, u: Any, msg: Any) -> None:
        outcome = rx.handle(msg.topic, bytes(msg.payload))
        if outcome not in (Outcome.VALID, Outcome.DUPLICATE):
            log.warning("a message on %s was not accepted: %s", msg.topic, outcome.value)

    def on_publish(c: Any, u: Any, mid: int, rc: Any, props: Any) -> None:
        acked.put(None if not rc.is_failure else f"the broker refused the command: {rc}")

    client.on_connect, client.on_subscribe = on_connect, on_subscribe
    client.on_message, client.on_publish = on_message, on_publish
    client.on_disconnect = on_disconnect
    try:
        client.connect(broker.host, broker.port)
    except OSError as exc:  # ssl.SSLError too: a broker certificate that does not verify
        raise ConnectionError(f"cannot connect to the broker {broker}: {exc}") from None
    client.loop_start()
    try:
        why = _get(subscribed, 15, "no answer from the broker to our subscription")
        if why:
            raise ConnectionError(why)
        client.publish(topic, message, qos=1)
        why = _get(acked, 15, "the broker did not acknowledge the command")
        if why:
            raise ConnectionError(why)
        try:
            return found.get(timeout=timeout)
        except queue.Empty:
            return None
    finally:
        client.disconnect()
        client.loop_stop()


def _fix(rc: Any) -> str:
    """What to check after a refused CONNACK (mosquitto answers a wrong password with
    Not authorized, 0x87; others with Bad user name or password, 0x86)."""
    code = getattr(rc, "value", rc)
    if code in (0x86, 0x87, 0x04, 0x05):
        return (
            "check --username, the password (--password-file or the environment), the "
            "client certificate and the broker's ACL"
        )
    if code in (0x84, 0x01):
        return "the broker does not speak this MQTT version: try --protocol mqtt311"
    return "see the broker's log"


def _get(q: queue.Queue[str | None], timeout: float, late: str) -> str | None:
    try:
        return q.get(timeout=timeout)
    except queue.Empty:
        return late


def _jsonable(res: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.hex() if isinstance(v, bytes) else v) for k, v in res.items()}


def describe(cid: str, r: dict[str, Any]) -> str:
    """One human line per result (and the detail below it)."""
    head = f"command {r['id'] or cid}: {r['outcome']}"
    if r["reason"]:
        head += f" ({r['reason']})"
    if r["op"] == "write" and r["tag"] is not None:
        head += f": {r['tag']} = {r['value']!r}"
        if r["outcome"] == "done":
            head += f", read back {r['after']!r}"
        if r["before"] is not None:
            head += f" (was {r['before']!r})"
    elif r["op"] == "config" and r["version"] is not None:
        head += f": config version {r['version']}"
    if r["again"]:
        head += " [delivered again: this is the result of its one execution]"
    lines = [head]
    if r["detail"]:
        lines += ["  " + line for line in str(r["detail"]).splitlines()]
    return "\n".join(lines)


__all__ = ["EXIT_BAD_INPUT", "describe", "main", "register", "send_and_wait"]
