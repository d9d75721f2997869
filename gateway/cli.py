"""The `edgegw` command. Each sub-command's help ends with an example.

Exit status: 0 success, 1 failure at run time, 2 bad input (config, arguments).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path

from . import __version__
from .config import ConfigError, load_config

EXIT_BAD_INPUT = 2


def _cmd_validate(args: argparse.Namespace) -> int:
    from .registry import describe_device

    cfg = _load(args.config)
    total = 0
    print(
        f"{args.config}: OK — gateway {cfg.gateway.id}, {len(cfg.devices)} device(s), "
        f"uplink [{cfg.uplink.host}]:{cfg.uplink.port}, topic {cfg.topic('telemetry')}"
    )
    for dev in cfg.devices:
        lines = describe_device(dev)
        total += len(lines)
        print(
            f"\ndevice {dev.name} ({dev.protocol}, every {dev.poll_interval_ms} ms): "
            f"{len(dev.tags)} tags in {len(lines)} request(s) per cycle"
        )
        for line in lines:
            print(f"  {line}")
    print(f"\n{total} request(s) per cycle in all")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from .daemon import run_async, serve, setup_logging

    cfg = _load(args.config)
    setup_logging(args.log_level)
    run_async(serve(cfg))
    return 0


def _cmd_receive(args: argparse.Namespace) -> int:
    from security import kid_for, load_public_key

    from .receiver import (
        JsonLinesSink,
        MqttReceiver,
        Receiver,
        SqliteSink,
        restore_tracks,
        summary,
    )

    keys = {}
    for path in args.pubkey:
        pub = load_public_key(path)
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
    mr.start()
    print(
        f"receiving {mr.topic} from [{host}]:{args.port} with {len(keys)} key(s)", file=sys.stderr
    )
    deadline = time.monotonic() + args.duration if args.duration else None
    while not stop.wait(args.stats_interval):
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


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(duration=args.duration, state_dir=args.state_dir, json_out=args.json)


def _cmd_simulate(args: argparse.Namespace) -> int:
    from .simulate import simulate

    cfg = _load(args.config)
    return simulate(cfg, args.update_interval)


def _load(path: str):  # type: ignore[no-untyped-def]
    try:
        return load_config(path)
    except ConfigError as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgegw",
        description="Industrial edge gateway: polls PLCs, signs the data, stores it until "
        "the platform has it, and forwards it over MQTT.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"edgegw {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, help_: str, example: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    s = cmd("run", "run the gateway daemon", "edgegw run -c /etc/edgegw/config.yaml")
    s.add_argument("-c", "--config", required=True, help="YAML config file")
    s.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    s.set_defaults(func=_cmd_run)

    s = cmd(
        "validate",
        "check a config file and print the compiled read plan",
        "edgegw validate /etc/edgegw/config.yaml",
    )
    s.add_argument("config", nargs="?", help="YAML config file")
    s.add_argument("-c", dest="config_opt", help=argparse.SUPPRESS)
    s.set_defaults(func=_cmd_validate)

    s = cmd(
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
    s.set_defaults(func=_cmd_receive)

    s = cmd(
        "demo",
        "simulated PLCs → gateway → MQTT over IPv6 → verifying receiver",
        "edgegw demo --duration 20 --json",
    )
    s.add_argument("--duration", type=float, default=20.0, help="seconds of polling")
    s.add_argument("--state-dir", help="keep keys, outbox, config and logs here")
    s.add_argument("--json", action="store_true", help="end with a JSON summary line")
    s.set_defaults(func=_cmd_demo)

    s = cmd(
        "simulate",
        "serve simulated devices for every device of a config",
        "edgegw simulate -c demo.yaml",
    )
    s.add_argument("-c", "--config", required=True, help="YAML config file")
    s.add_argument(
        "--update-interval",
        type=float,
        default=0.1,
        help="seconds between value updates (default 0.1)",
    )
    s.set_defaults(func=_cmd_simulate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "validate":
        args.config = args.config or args.config_opt
        if not args.config:
            print("edgegw validate: give a config file", file=sys.stderr)
            return EXIT_BAD_INPUT
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
