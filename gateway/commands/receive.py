"""`edgegw receive`: the platform side."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from . import EXIT_FAILED, Subparsers, add_command, fail
from .broker_options import PASSWORD_EPILOG, add_broker_options, broker_from_args

log = logging.getLogger("edgegw.receiver")

DEFAULT_DB = "received.db"


def register(sub: Subparsers) -> None:
    s = add_command(
        sub,
        "receive",
        "platform side: verify, de-duplicate, witness and store the gateways' messages",
        "edgegw receive --host ::1 --enrol /etc/edgegw/enrolled/ --db received.db\n"
        "  edgegw receive --host broker.plant --port 8883 --ca-file ca.pem --username rx "
        "--password-file /etc/edgegw/mqtt.pw \\\n"
        "      --enrol enrolled/ --db postgresql://edgegw@db.plant/edgegw --share rx "
        "--client-id rx-$(hostname)\n"
        "  edgegw receive --report --db postgresql://edgegw@db.plant/edgegw",
    )
    s.epilog = (
        f"{s.epilog}\n\nEnrolment: a directory of <gateway id>.pub.pem files (from `edgegw keys "
        "export-public --root`),\nor a YAML file mapping gateway ids to PEM files; --pubkey "
        "GATEWAY_ID=FILE adds one gateway.\nA message verifies only under a key of the gateway "
        "its topic names: the enrolled root, or a\nkey the gateway rotated to (certified from "
        "that root). State survives restarts in --db.\nExit status: 0 after --duration or a "
        "signal, 1 when reception stopped (broker refused,\nthe network thread died), 2 bad "
        "input (enrolment, options).\n\nPostgreSQL: --db postgresql://USER@HOST/DB (libpq URL; "
        "the password from PGPASSWORD or\n~/.pgpass, TLS with ?sslmode=verify-full&sslrootcert="
        "...). Any number of receivers in one\n--share group against one database behave as "
        "one: give each its own --client-id.\n" + PASSWORD_EPILOG
    )
    add_broker_options(s)
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
        help="the store: state, messages and readings: postgresql://... for a fleet, or a "
        f"SQLite file (default {DEFAULT_DB})",
    )
    s.add_argument(
        "--report",
        action="store_true",
        help="print what --db holds (messages, points, gaps, alerts, over every receiver "
        "that shares it) as JSON and exit",
    )
    s.add_argument(
        "--no-readings",
        action="store_true",
        help="keep only the state and message index in --db, not the readings",
    )
    s.add_argument(
        "--jsonl",
        action="store_true",
        help="also print readings, events and notices as JSON lines on stdout",
    )
    s.add_argument(
        "--max-message-bytes",
        type=int,
        default=None,
        metavar="N",
        help="reject larger messages before parsing them (default 2 MiB: 8x a gateway's "
        "default uplink.max_message_bytes; raise it for gateways configured above 2 MiB)",
    )
    s.add_argument("--share", metavar="GROUP", help="MQTT 5 shared subscription group")
    s.add_argument(
        "--client-id",
        help="MQTT client id, one per receiver process (default edgegw-receive-<host>"
        "[-<share group>]); the broker keeps its session for --session-expiry",
    )
    s.add_argument(
        "--session-expiry",
        type=int,
        default=3600,
        help="seconds the broker keeps this receiver's session and its unacknowledged "
        "messages while it is away (0: a clean session)",
    )
    s.add_argument("--duration", type=float, default=0, help="stop after S seconds")
    s.add_argument(
        "--stats-interval",
        type=float,
        default=10.0,
        help="print counters to stderr every S seconds",
    )
    s.set_defaults(func=main)


def _client_id(args: argparse.Namespace) -> str:
    if args.client_id:
        return str(args.client_id)
    base = f"edgegw-receive-{socket.gethostname()}"
    return f"{base}-{args.share}" if args.share else base


def report_main(args: argparse.Namespace) -> int:
    from ..receiver import StoreError, open_store

    if "://" not in args.db and not Path(args.db).is_file():
        raise fail(f"{args.db}: no such receiver store (the --db of `edgegw receive`)")
    try:
        store = open_store(args.db)
        try:
            print(json.dumps(store.report().to_json()))
        finally:
            store.close()
    except StoreError as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    except ImportError as exc:
        raise _needs_psycopg(args.db, exc) from None
    return 0


def _needs_psycopg(db: str, exc: ImportError) -> SystemExit:
    return fail(
        f"--db {db.split('://')[0]}://: needs psycopg ({exc}); install the "
        "platform extra: pip install 'edgegw[platform]'",
        EXIT_FAILED,
    )


def main(args: argparse.Namespace) -> int:
    if args.report:
        return report_main(args)
    broker = broker_from_args(args)
    from ..receiver import (
        DEFAULT_MAX_MESSAGE_BYTES,
        EnrolmentChanged,
        EnrolmentError,
        Enrolments,
        JsonLinesSink,
        MqttReceiver,
        Receiver,
        StoreError,
        open_store,
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
        store = open_store(args.db, readings=not args.no_readings)
    except StoreError as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    except ImportError as exc:
        raise _needs_psycopg(args.db, exc) from None
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
    except StoreError as exc:
        store.close()
        raise fail(str(exc), EXIT_FAILED) from None
    host, port = broker.host, broker.port
    client_id = _client_id(args)
    mr = MqttReceiver(
        rx,
        host,
        port,
        client_id=client_id,
        share_group=args.share,
        session_expiry_s=args.session_expiry,
        tls_context=broker.tls,
        username=broker.username,
        password=broker.password,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        mr.start()
    except (OSError, TimeoutError) as exc:
        store.close()
        raise fail(f"cannot subscribe at [{host}]:{port}: {exc}", EXIT_FAILED) from None
    where = getattr(store, "where", args.db)
    print(
        f"receiving {mr.topic} from [{host}]:{port} as {client_id} for {len(trust)} "
        f"gateway(s), store {where}",
        file=sys.stderr,
    )

    def publish_stats(health: Any) -> None:
        stats = summary(rx)
        try:
            store.record_stats(client_id, stats)
        except StoreError as exc:
            log.warning("cannot record this receiver's counters: %s", exc)
        print(json.dumps({**stats, "connected": health.connected}), file=sys.stderr)

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
            publish_stats(health)  # the store serialises it with the messages' transactions
        if deadline and now >= deadline:
            break
    mr.stop()
    publish_stats(mr.health())
    out: dict[str, Any] = {"receiver": summary(rx)}
    try:
        out["store"] = store.report().to_json()
    except StoreError as exc:
        out["store_error"] = str(exc)
    store.close()
    print(json.dumps(out), file=sys.stderr)
    return rc
