"""`edgegw receive`: the platform side."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path

from . import EXIT_FAILED, Subparsers, add_command, fail

DEFAULT_DB = "received.db"


def register(sub: Subparsers) -> None:
    s = add_command(
        sub,
        "receive",
        "platform side: verify, de-duplicate, witness and store the gateways' messages",
        "edgegw receive --host ::1 --enrol /etc/edgegw/enrolled/ --db received.db",
    )
    s.epilog = (
        f"{s.epilog}\n\nEnrolment: a directory of <gateway id>.pub.pem files (from `edgegw keys "
        "export-public --root`),\nor a YAML file mapping gateway ids to PEM files; --pubkey "
        "GATEWAY_ID=FILE adds one gateway.\nA message verifies only under a key of the gateway "
        "its topic names: the enrolled root, or a\nkey the gateway rotated to (certified from "
        "that root). State survives restarts in --db.\nExit status: 0 after --duration or a "
        "signal, 1 when reception stopped (broker refused,\nthe network thread died), 2 bad "
        "input (enrolment, options)."
    )
    s.add_argument("--host", default="::1", help="broker address (default ::1)")
    s.add_argument("--port", type=int, default=1883)
    s.add_argument("--prefix", default="edgegw", help="topic prefix (default edgegw)")
    s.add_argument(
        "--enrol",
        action="append",
        default=[],
        metavar="PATH",
        help="enrolled gateways: a directory of <id>.pub.pem files or a YAML file (repeatable)",
    )
    s.add_argument(
        "--pubkey",
        action="append",
        default=[],
        metavar="GATEWAY_ID=FILE",
        help="enrol one gateway with its root public key (PEM); repeatable",
    )
    s.add_argument(
        "--db",
        default=DEFAULT_DB,
        help=f"the store: state, messages and readings (SQLite file; default {DEFAULT_DB})",
    )
    s.add_argument(
        "--no-readings",
        action="store_true",
        help="keep only the state and message index in --db, not the readings",
    )
    s.add_argument("--jsonl", action="store_true", help="also print readings as JSON lines")
    s.add_argument(
        "--max-message-bytes",
        type=int,
        default=None,
        metavar="N",
        help="reject larger messages before parsing them (default 2 MiB)",
    )
    s.add_argument("--share", metavar="GROUP", help="MQTT 5 shared subscription group")
    s.add_argument("--client-id", help="fixed client id: keeps a broker session")
    s.add_argument(
        "--session-expiry",
        type=int,
        default=3600,
        help="seconds the broker keeps the session of a fixed client id",
    )
    s.add_argument("--duration", type=float, default=0, help="stop after S seconds")
    s.add_argument(
        "--stats-interval",
        type=float,
        default=10.0,
        help="print counters to stderr every S seconds",
    )
    s.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..receiver import (
        DEFAULT_MAX_MESSAGE_BYTES,
        EnrolmentChanged,
        EnrolmentError,
        Enrolments,
        JsonLinesSink,
        MqttReceiver,
        Receiver,
        SqliteStore,
        StoreError,
        summary,
    )

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    trust = Enrolments()
    try:
        for path in args.enrol:
            trust.load(path)
        for spec in args.pubkey:
            trust.add_pubkey(spec)
    except EnrolmentError as exc:
        raise fail(str(exc)) from None
    if not trust:
        raise fail("no gateway is enrolled: give --enrol DIR_OR_FILE or --pubkey ID=FILE")
    max_bytes = args.max_message_bytes or DEFAULT_MAX_MESSAGE_BYTES
    if max_bytes < 1024:
        raise fail("--max-message-bytes: at least 1024")
    try:
        store = SqliteStore(Path(args.db), readings=not args.no_readings)
    except StoreError as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    try:
        rx = Receiver(
            trust,
            args.prefix,
            JsonLinesSink() if args.jsonl else None,
            store=store,
            max_message_bytes=max_bytes,
        )
    except EnrolmentChanged as exc:
        store.close()
        raise fail(str(exc)) from None
    host = args.host.strip("[]")
    mr = MqttReceiver(
        rx,
        host,
        args.port,
        client_id=args.client_id or "",
        share_group=args.share,
        session_expiry_s=args.session_expiry,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        mr.start()
    except (OSError, TimeoutError) as exc:
        store.close()
        raise fail(f"cannot subscribe at [{host}]:{args.port}: {exc}", EXIT_FAILED) from None
    print(
        f"receiving {mr.topic} from [{host}]:{args.port} for {len(trust)} gateway(s), "
        f"store {args.db}",
        file=sys.stderr,
    )
    rc = 0
    deadline = time.monotonic() + args.duration if args.duration else None
    last_stats = time.monotonic()
    while not stop.wait(1.0):
        health = mr.supervise()
        if not health.ok:
            print(
                "edgegw receive: the MQTT network thread has stopped; nothing more can be "
                "received: exiting (a service manager restarts it)",
                file=sys.stderr,
            )
            rc = EXIT_FAILED
            break
        now = time.monotonic()
        if now - last_stats >= args.stats_interval:
            last_stats = now
            print(json.dumps({**summary(rx), "connected": health.connected}), file=sys.stderr)
        if deadline and now >= deadline:
            break
    mr.stop()
    out = summary(rx)
    out["missing"] = {gw: [list(r) for r in rs] for gw, rs in rx.missing().items()}
    store.close()
    print(json.dumps(out), file=sys.stderr)
    return rc
