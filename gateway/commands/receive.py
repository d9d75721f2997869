"""`edgegw receive`: the platform side."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path

from . import Subparsers, add_command, fail


def register(sub: Subparsers) -> None:
    s = add_command(
        sub,
        "receive",
        "platform side: verify, de-duplicate and store the gateway's messages",
        "edgegw receive --host ::1 --pubkey gw1.pub.pem --db received.db",
    )
    s.add_argument("--host", default="::1", help="broker address (default ::1)")
    s.add_argument("--port", type=int, default=1883)
    s.add_argument("--prefix", default="edgegw", help="topic prefix (default edgegw)")
    s.add_argument(
        "--pubkey",
        action="append",
        required=True,
        help="a gateway's public key (PEM); repeat for several gateways",
    )
    out = s.add_mutually_exclusive_group()
    out.add_argument("--db", help="store verified readings in this SQLite file")
    out.add_argument("--jsonl", action="store_true", help="print readings as JSON lines")
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
    from security import KeyFileError, kid_for, load_public_key

    from ..receiver import (
        JsonLinesSink,
        MqttReceiver,
        Receiver,
        SqliteSink,
        restore_tracks,
        summary,
    )

    keys = {}
    for path in args.pubkey:
        try:
            pub = load_public_key(path)
        except KeyFileError as exc:
            raise fail(str(exc)) from None
        keys[kid_for(pub)] = pub
    sink = SqliteSink(Path(args.db)) if args.db else (JsonLinesSink() if args.jsonl else None)
    rx = Receiver(keys, args.prefix, sink)
    if isinstance(sink, SqliteSink):
        restore_tracks(rx, sink.known_seqs())
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
        raise fail(f"cannot subscribe at [{host}]:{args.port}: {exc}", 1) from None
    print(
        f"receiving {mr.topic} from [{host}]:{args.port} with {len(keys)} key(s)", file=sys.stderr
    )
    deadline = time.monotonic() + args.duration if args.duration else None
    while not stop.wait(min(args.stats_interval, args.duration or args.stats_interval)):
        print(json.dumps(summary(rx)), file=sys.stderr)
        if deadline and time.monotonic() >= deadline:
            break
    mr.stop()
    if sink is not None:
        sink.close()
    out = summary(rx)
    out["missing"] = {gw: [list(r) for r in rs] for gw, rs in rx.missing().items()}
    print(json.dumps(out), file=sys.stderr)
    return 0
