"""`edgegw doctor`: check a gateway's config and surroundings, for the technician on site.

Every check ends as PASS, WARN or FAIL (or SKIP when it cannot apply), and every WARN or
FAIL says what to do. Exit status 0 when nothing failed (warnings are shown, they do not
fail), 1 when something did, 2 for bad arguments. Checks touch nothing: they read files,
resolve names and open (and close) TCP and TLS connections.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import errno
import ipaddress
import json
import os
import pwd
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from ..config import Config, ConfigError, load_config
from ..diskroom import outbox_room
from ..status import STATUS_FILE
from . import EXIT_FAILED, EXIT_OK, Subparsers, add_command
from .status import STALE_AFTER_S, human_bytes, human_duration, read_snapshot, status_age_s

DEFAULT_CONFIG = "/etc/edgegw/config.yaml"
SERVICE_USER = "edgegw"
PLACEHOLDER_ID = "CHANGE-ME"  # the gateway id of the packaged example config
KEY_FILE = "keys/device.ed25519.pem"  # security.DeviceKey.PRIVATE_KEY_FILE
DISK_FAIL_BYTES = 100 * 2**20
DISK_WARN_BYTES = 1 * 2**30
CERT_WARN_DAYS = 30
EARLIEST_SANE_TIME = datetime(2024, 1, 1, tzinfo=UTC).timestamp()

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"


@dataclass
class Check:
    name: str
    outcome: str  # pass | warn | fail | skip
    detail: str
    fix: str = ""


def register(sub: Subparsers) -> None:
    s = add_command(
        sub,
        "doctor",
        "check config, state directory, key, clock, DNS, broker (TCP, TLS, MQTT login and "
        "limits), devices and disk",
        "sudo edgegw doctor -c /etc/edgegw/config.yaml",
    )
    s.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"default {DEFAULT_CONFIG}")
    s.add_argument(
        "--timeout", type=float, default=3.0, help="seconds per DNS lookup and connect (default 3)"
    )
    s.add_argument("--json", action="store_true", help="print the results as JSON")
    s.set_defaults(func=main)


# -- helpers ----------------------------------------------------------------------------

T = TypeVar("T")


def _with_timeout(fn: Callable[[], T], timeout: float) -> T:
    """Run a blocking call that has no timeout of its own (getaddrinfo) in a daemon thread."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True, name="doctor-call")
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"no answer in {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# Example addresses (RFC 5737, RFC 3849): never a real peer, so never worth a connect.
_DOCUMENTATION_NETS = [
    ipaddress.ip_network(n)
    for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
]


def _documentation(addr: str) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(ip in net for net in _DOCUMENTATION_NETS if net.version == ip.version)


def _show(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def resolve(host: str, port: int, timeout: float) -> list[tuple[int, str]]:
    """(family, address) pairs for host, IPv6 first, without duplicates."""
    infos = _with_timeout(
        lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP),
        timeout,
    )
    seen: list[tuple[int, str]] = []
    for family, *_, sockaddr in infos:
        item = (int(family), str(sockaddr[0]))
        if item not in seen and family in (socket.AF_INET6, socket.AF_INET):
            seen.append(item)
    return sorted(seen, key=lambda fa: fa[0] != socket.AF_INET6)


def connect(family: int, addr: str, port: int, timeout: float) -> tuple[socket.socket, float]:
    """An open TCP socket and the connect time in ms."""
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    t0 = time.monotonic()
    try:
        s.connect((addr, port))
    except BaseException:
        s.close()
        raise
    return s, (time.monotonic() - t0) * 1e3


def why_not_connected(exc: BaseException, what: str, port: int, timeout: float) -> tuple[str, str]:
    """(what happened, what to do) for a failed TCP connect to ``what`` on ``port``."""
    if isinstance(exc, TimeoutError | socket.timeout):
        return (
            f"no answer in {timeout:g} s",
            f"a firewall drops the traffic, or the address is wrong: check the address, the "
            f"routes (ip route) and that the plant firewall lets TCP port {port} through",
        )
    code = getattr(exc, "errno", None)
    if code == errno.ECONNREFUSED:
        return (
            "connection refused",
            f"the host answers but nothing listens on port {port}: is {what} running, and is "
            "the port right?",
        )
    if code in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
        return (
            f"no route ({os.strerror(code)})",
            "this gateway has no address or route of that family: check ip addr / ip route "
            "(ip -6 addr / ip -6 route for IPv6) and the network settings",
        )
    return str(exc), f"check that {what} is up and reachable from this gateway"


# -- the checks -------------------------------------------------------------------------


def check_config(path: str) -> tuple[list[Check], Config | None]:
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        if not Path(path).exists():
            return [
                Check(
                    "config",
                    FAIL,
                    f"{path} does not exist",
                    "give the config with -c FILE (the package installs /etc/edgegw/config.yaml)",
                )
            ], None
        shown = exc.lines[:5] + (
            [f"... and {len(exc.lines) - 5} more"] if len(exc.lines) > 5 else []
        )
        return [
            Check(
                "config",
                FAIL,
                "\n".join(shown),
                f"fix the lines above in {path}; `edgegw validate {path}` lists every problem",
            )
        ], None
    tls = "TLS" if cfg.uplink.tls else "no TLS"
    checks = [
        Check(
            "config",
            PASS,
            f"{path}: gateway {cfg.gateway.id}, {len(cfg.devices)} device(s), "
            f"uplink {_show(cfg.uplink.host, cfg.uplink.port)} with {tls}",
        )
    ]
    if cfg.gateway.id == PLACEHOLDER_ID:
        checks.append(
            Check(
                "gateway id",
                FAIL,
                f"gateway.id is {PLACEHOLDER_ID!r}, the packaged example's",
                f"set gateway.id in {path} to this gateway's id on the platform",
            )
        )
    return checks, cfg


def _expected_owner() -> tuple[int, str]:
    """The service user when it exists (the appliance), else whoever runs doctor."""
    try:
        pw = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        uid = os.geteuid()
        try:
            return uid, pwd.getpwuid(uid).pw_name
        except KeyError:
            return uid, str(uid)
    return pw.pw_uid, pw.pw_name


def _owner_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def check_state_dir(state_dir: Path) -> Check:
    name = "state dir"
    try:
        st = state_dir.stat()
    except FileNotFoundError:
        return Check(
            name,
            WARN,
            f"{state_dir} does not exist yet",
            "the daemon creates it at its first start (the systemd unit's StateDirectory=); "
            "if this is not the path you meant, fix gateway.state_dir",
        )
    except PermissionError:
        return Check(name, WARN, f"cannot look at {state_dir}: permission denied", "run as root")
    if not stat.S_ISDIR(st.st_mode):
        return Check(
            name, FAIL, f"{state_dir} is not a directory", "remove it or fix gateway.state_dir"
        )
    mode = stat.S_IMODE(st.st_mode)
    uid, user = _expected_owner()
    where = f"{state_dir}: owner {_owner_name(st.st_uid)}, mode {mode:04o}"
    if mode & 0o022:
        return Check(
            name,
            FAIL,
            f"{where}: writable by {'everyone' if mode & 0o002 else 'its group'}",
            f"others could replace the outbox or the status file: chmod 750 {state_dir}",
        )
    if st.st_uid != uid:
        return Check(
            name,
            FAIL,
            f"{where}: the daemon runs as {user}",
            f"sudo chown -R {user}:{user} {state_dir}",
        )
    if os.statvfs(state_dir).f_flag & os.ST_RDONLY:
        return Check(
            name,
            FAIL,
            f"{where}: on a file system mounted read-only",
            f"remount it read-write (findmnt -T {state_dir} shows the mount; mount -o "
            "remount,rw MOUNTPOINT), or put gateway.state_dir on a writable disk",
        )
    if os.geteuid() == st.st_uid and not os.access(state_dir, os.W_OK | os.X_OK):
        return Check(name, FAIL, f"{where}: not writable", f"chmod 750 {state_dir}")
    if mode & 0o007:
        return Check(
            name,
            WARN,
            f"{where}: others may read the outbox and status",
            f"chmod 750 {state_dir} (group {user} keeps read access for `edgegw status`)",
        )
    return Check(name, PASS, where)


def check_key(state_dir: Path) -> Check:
    name = "device key"
    path = state_dir / KEY_FILE
    try:
        st = path.lstat()
    except FileNotFoundError:
        from security.keyring import _traces  # what shows an identity already exists

        found = _traces(state_dir) if state_dir.is_dir() else []
        if found:
            return Check(
                name,
                FAIL,
                f"{path} is missing, but {state_dir} holds this gateway's identity "
                f"({', '.join(found)}): the daemon refuses to start",
                f"restore {path} (mode 0600) from a backup (docs/security.md)",
            )
        return Check(
            name,
            WARN,
            f"{path} does not exist yet",
            "the daemon creates the device key at its first start; then register "
            f"{state_dir / 'keys/device.pub.pem'} with the platform",
        )
    except PermissionError:
        return Check(
            name,
            WARN,
            f"cannot look at {path}: permission denied",
            "run as root: sudo edgegw doctor",
        )
    mode = stat.S_IMODE(st.st_mode)
    uid, user = _expected_owner()
    if not stat.S_ISREG(st.st_mode):
        return Check(name, FAIL, f"{path} is not a regular file", "it must be the key file itself")
    if mode & 0o077:
        return Check(
            name,
            FAIL,
            f"{path} has mode {mode:04o}: others may read the device's signing key",
            f"chmod 600 {path}, and treat the key as exposed: rotate it with the platform",
        )
    if st.st_uid != uid:
        return Check(
            name,
            FAIL,
            f"{path} belongs to {_owner_name(st.st_uid)}; the daemon runs as {user}",
            f"sudo chown {user}:{user} {path}",
        )
    from security import DeviceKey, KeyFileError
    from security.keyring import IdentityRefused, open_identity

    try:
        key = DeviceKey.load(path)
    except KeyFileError as exc:
        return Check(
            name, FAIL, str(exc), "restore the key from a backup, or rotate it with the platform"
        )
    try:
        ident = open_identity(state_dir, record=False)  # only reads and checks
    except IdentityRefused as exc:
        return Check(
            name,
            FAIL,
            f"the daemon will refuse this key: {exc}",
            "restore keys/ from a backup (see docs/security.md, 'What the daemon refuses')",
        )
    chain = f", reached from the enrolled root through {len(ident.keychain)} rotation(s)"
    return Check(
        name,
        PASS,
        f"{path}: mode 0600, kid {key.kid.hex()}"
        + (chain if ident.keychain else ", the enrolled key")
        + f"; public key {state_dir / 'keys/device.pub.pem'}",
    )


def _timedatectl() -> dict[str, str] | None:
    exe = shutil.which("timedatectl")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "show"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)


def _adjtimex_state() -> int | None:
    """adjtimex(2) in read-only mode: the kernel's clock state (5 = TIME_ERROR: unsynced)."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        buf = ctypes.create_string_buffer(1024)  # struct timex, zeroed: modes = 0 reads only
        state = int(libc.adjtimex(buf))
    except (OSError, AttributeError):
        return None
    return None if state < 0 else state


def check_clock() -> Check:
    name = "clock"
    now = time.time()
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if now < EARLIEST_SANE_TIME:
        return Check(
            name,
            FAIL,
            f"the clock says {stamp}: it was never set (a Pi has no battery clock)",
            "readings get wrong timestamps: make an NTP server reachable (timedatectl set-ntp "
            "true; NTP= in /etc/systemd/timesyncd.conf) or set the time by hand",
        )
    td = _timedatectl()
    if td is not None and "NTPSynchronized" in td:
        ntp = td.get("NTP", "no") == "yes"
        if td["NTPSynchronized"] == "yes":
            return Check(name, PASS, f"{stamp}, synchronised by NTP")
        if ntp:
            return Check(
                name,
                WARN,
                f"{stamp}; NTP is on but not synchronised yet",
                "wait a minute; if it stays so, the NTP servers are unreachable: set ones the "
                "plant network allows in /etc/systemd/timesyncd.conf (NTP=) and check "
                "timedatectl timesync-status",
            )
        return Check(
            name,
            FAIL,
            f"{stamp}; NTP is off and the clock is not synchronised",
            "readings carry this clock's timestamps: sudo timedatectl set-ntp true, with an NTP "
            "server the plant network allows (NTP= in /etc/systemd/timesyncd.conf)",
        )
    state = _adjtimex_state()
    if state is None:
        return Check(
            name,
            WARN,
            f"{stamp}; synchronisation unknown (no timedatectl, no adjtimex)",
            "check that an NTP client (systemd-timesyncd or chrony) runs",
        )
    if state == 5:
        return Check(
            name,
            WARN,
            f"{stamp}; the kernel reports the clock as not synchronised (no timedatectl)",
            "check that an NTP client (systemd-timesyncd or chrony) runs and reaches its servers",
        )
    return Check(name, PASS, f"{stamp}, synchronised (kernel clock state {state})")


def check_dns(host: str, port: int, timeout: float) -> tuple[Check, list[tuple[int, str]]]:
    name = "broker DNS"
    if _is_ip(host):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        return Check(name, SKIP, f"{host} is an IP address: no lookup"), [(fam, host)]
    try:
        addrs = resolve(host, port, timeout)
    except (OSError, TimeoutError) as exc:
        msg = exc.strerror if isinstance(exc, socket.gaierror) and exc.strerror else str(exc)
        return (
            Check(
                name,
                FAIL,
                f"cannot resolve {host}: {msg}",
                "check uplink.host for typos; check this gateway's DNS servers (resolvectl "
                "status, /etc/resolv.conf); or put the broker's IP address in uplink.host",
            ),
            [],
        )
    return Check(name, PASS, f"{host} → {', '.join(a for _, a in addrs)}"), addrs


def check_broker_tcp(
    host: str, port: int, addrs: list[tuple[int, str]], timeout: float
) -> tuple[list[Check], tuple[int, str] | None]:
    """One row per address family; a family failing while the other works is a warning
    (the forwarder tries every address), all failing is a failure."""
    results: list[tuple[str, str, str, str]] = []  # (label, outcome-if-fail, detail, fix)
    working: tuple[int, str] | None = None
    for family, label in ((socket.AF_INET6, "IPv6"), (socket.AF_INET, "IPv4")):
        cands = [a for f, a in addrs if f == family]
        if not cands:
            results.append((label, SKIP, f"{host} has no {label} address", ""))
            continue
        last: tuple[str, str] = ("", "")
        for addr in cands:
            if _documentation(addr):
                last = (
                    f"{addr} is an example address from the documentation",
                    "put the broker's real address in uplink.host",
                )
                continue
            try:
                sock, ms = connect(family, addr, port, timeout)
            except OSError as exc:
                why, fix = why_not_connected(exc, "the MQTT broker", port, timeout)
                last = (f"{_show(addr, port)}: {why}", fix)
                continue
            sock.close()
            working = working or (family, addr)
            results.append((label, PASS, f"{_show(addr, port)} connected in {ms:.0f} ms", ""))
            break
        else:
            results.append((label, FAIL, *last))
    if not addrs:
        return [Check("broker TCP", SKIP, "no address to try")], None
    checks = []
    for label, outcome, detail, fix in results:
        if outcome == FAIL and working is not None:
            outcome = WARN
            other = "IPv4" if label == "IPv6" else "IPv6"
            fix += f" (the gateway still reaches the broker over {other})"
        checks.append(Check(f"broker {label}", outcome, detail, fix))
    return checks, working


def check_tls(cfg: Config, working: tuple[int, str] | None, timeout: float) -> Check:
    name = "broker TLS"
    up = cfg.uplink
    if up.tls is None:
        loopback = _is_ip(up.host) and ipaddress.ip_address(up.host).is_loopback
        if loopback or up.host == "localhost":
            return Check(name, SKIP, "not configured (the broker is on this machine)")
        return Check(
            name,
            WARN,
            "not configured: messages are signed, but travel unencrypted and the broker is "
            "not authenticated",
            "set uplink.tls (an empty `tls: {}` uses the system's CA store) and the TLS port",
        )
    from security.tls import client_context

    t = up.tls
    for key in ("ca_file", "cert_file", "key_file"):
        f = getattr(t, key)
        if f is not None and not Path(f).is_file():
            return Check(
                name,
                FAIL,
                f"uplink.tls.{key}: {f} does not exist",
                f"put the file there, or fix uplink.tls.{key} in the config",
            )
    try:
        ctx = client_context(t.ca_file, t.cert_file, t.key_file)
    except (OSError, ssl.SSLError, ValueError) as exc:
        return Check(
            name,
            FAIL,
            f"cannot load the TLS files: {exc}",
            "check uplink.tls.ca_file / cert_file / key_file: the paths, that they are PEM "
            f"files, and that user {SERVICE_USER} may read them",
        )
    if working is None:
        return Check(name, SKIP, "the broker is not reachable over TCP (see above)")
    family, addr = working
    try:
        raw, _ = connect(family, addr, up.port, timeout)
    except OSError as exc:
        return Check(name, FAIL, f"{_show(addr, up.port)}: {exc}", "see the TCP rows above")
    try:
        with ctx.wrap_socket(raw, server_hostname=up.host) as tls:
            version = tls.version()
            cert = tls.getpeercert() or {}
    except ssl.SSLCertVerificationError as exc:
        if exc.verify_code in (X509_NOT_YET_VALID, X509_EXPIRED):
            return _certificate_dates(name, exc, family, addr, up.port, up.host, timeout)
        return Check(
            name,
            FAIL,
            f"the broker's certificate is not trusted: {exc.verify_message}",
            "the certificate must be signed by the CA in uplink.tls.ca_file (or the system "
            f"store when unset) and name {up.host!r}; ask the platform for its CA file",
        )
    except (ssl.SSLError, OSError) as exc:
        return Check(
            name,
            FAIL,
            f"TLS handshake with {_show(addr, up.port)} failed: {exc}",
            f"is port {up.port} the broker's TLS listener (usually 8883)? with mutual TLS, is "
            "the client certificate one the broker accepts?",
        )
    finally:
        raw.close()
    detail = f"{version} with {up.host}, certificate verified"
    not_after = cert.get("notAfter")
    if isinstance(not_after, str):
        expires = ssl.cert_time_to_seconds(not_after)
        days = (expires - time.time()) / 86400
        detail += f", valid until {datetime.fromtimestamp(expires, UTC):%Y-%m-%d}"
        if days < CERT_WARN_DAYS:
            return Check(
                name,
                WARN,
                detail + f" ({days:.0f} days left)",
                "the broker's certificate expires soon: tell the platform team",
            )
    return Check(name, PASS, detail)


X509_NOT_YET_VALID, X509_EXPIRED = 9, 10  # OpenSSL's verify codes


def _peer_dates(
    family: int, addr: str, port: int, host: str, timeout: float
) -> tuple[float, float]:
    """The broker certificate's notBefore and notAfter (a second handshake that only
    reads the certificate: nothing is sent over it)."""
    from cryptography import x509

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    raw, _ = connect(family, addr, port, timeout)
    with ctx.wrap_socket(raw, server_hostname=host) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    return cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()


def _certificate_dates(
    name: str,
    exc: ssl.SSLCertVerificationError,
    family: int,
    addr: str,
    port: int,
    host: str,
    timeout: float,
) -> Check:
    """A certificate outside its dates: either the certificate or this gateway's clock
    is wrong. Said with both dates and the clock's state, so the right one is fixed."""

    def day(t: float) -> str:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d")

    now = time.time()
    try:
        start, end = _peer_dates(family, addr, port, host, timeout)
    except (OSError, ssl.SSLError, ValueError, AssertionError):
        start = end = None
    synced = _clock_synchronised()
    clock = f"this gateway's clock says {day(now)}" + (
        " and is synchronised by NTP" if synced else " and is NOT synchronised by NTP"
    )
    if exc.verify_code == X509_NOT_YET_VALID:
        valid = f"valid only from {day(start)}" if start else "not valid yet"
        return Check(
            name,
            FAIL,
            f"the broker's certificate is {valid}; {clock}",
            "this gateway's clock is behind (a Pi without network time starts in the past): "
            "set it, e.g. sudo timedatectl set-ntp true with an NTP server the plant allows; "
            "the certificate is not the problem"
            if not synced or (start and start - now > 86400)
            else "the certificate was issued for a later date: ask the platform team",
        )
    expired = f"expired on {day(end)}" if end else "expired"
    far = start is not None and end is not None and now - end > (end - start)
    if not synced or far:
        fix = (
            "this gateway's clock is probably wrong (ahead): it is later than the certificate's "
            "whole validity again, or not synchronised. Set the clock first (sudo timedatectl "
            "set-ntp true; timedatectl status); only if it is right, ask the platform to renew "
            "the broker's certificate"
        )
    else:
        fix = "the broker's certificate has expired: ask the platform team to renew it"
    return Check(name, FAIL, f"the broker's certificate {expired}; {clock}", fix)


def _clock_synchronised() -> bool:
    td = _timedatectl()
    if td is not None and "NTPSynchronized" in td:
        return td["NTPSynchronized"] == "yes"
    state = _adjtimex_state()
    return state is not None and state != 5


def check_mqtt(cfg: Config, working: tuple[int, str] | None, timeout: float) -> Check:
    """Speak MQTT as the forwarder does (TLS, credentials, protocol): the CONNACK result,
    the broker's limits, and one QoS 1 probe publish to <prefix>/<id>/doctor/probe (a
    topic the platform's receiver does not subscribe to) to check the rights to publish."""
    name = "broker MQTT"
    up = cfg.uplink
    if working is None:
        return Check(name, SKIP, "the broker is not reachable over TCP (see above)")
    from ..credentials import CredentialError
    from ..mqttlink import (
        PROTOCOL_NAMES,
        BrokerLimits,
        connect_kwargs,
        explain_refusal,
        new_client,
        publish_overhead,
    )

    tls = None
    if up.tls is not None:
        from security.tls import client_context

        try:
            tls = client_context(up.tls.ca_file, up.tls.cert_file, up.tls.key_file)
        except (OSError, ssl.SSLError, ValueError):
            return Check(name, SKIP, "the TLS files cannot be loaded (see broker TLS)")
    try:
        client = new_client(up, f"edgegw-doctor-{cfg.gateway.id}", tls)
    except CredentialError as exc:
        return Check(name, FAIL, str(exc), "fix the password source named above")
    done = threading.Event()
    box: dict[str, Any] = {}

    def on_connect(c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        box["rc"], box["props"] = rc, props
        done.set()

    def on_disconnect(c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        box.setdefault("lost", rc)
        done.set()

    def on_publish(c: Any, u: Any, mid: int, rc: Any, props: Any) -> None:
        box["puback"] = rc
        done.set()

    client.on_connect, client.on_disconnect = on_connect, on_disconnect
    client.on_publish = on_publish
    proto = PROTOCOL_NAMES[up.protocol]
    where = f"{_show(working[1], up.port)} ({proto}{', TLS' if tls else ''}"
    where += f", user {up.username!r})" if up.username else ")"
    try:
        # by name, as the forwarder does: TLS checks the certificate against it
        client.connect(up.host, up.port, up.keepalive_s, **connect_kwargs(up))
    except (OSError, ssl.SSLError) as exc:
        return Check(name, FAIL, f"{where}: {exc}", "see the TCP and TLS rows above")
    client.loop_start()
    try:
        done.wait(timeout)
        rc = box.get("rc")
        if rc is None:
            lost = box.get("lost")
            hints = []
            if tls is None:
                hints.append("if it is a TLS port (usually 8883), set uplink.tls")
            if up.protocol == "mqtt5":
                hints.append("if the broker speaks only MQTT 3.1.1, set uplink.protocol: mqtt311")
            return Check(
                name,
                FAIL,
                f"{where}: no CONNACK"
                + (
                    f": the broker closed the connection ({lost})" if lost else f" in {timeout:g} s"
                ),
                "; ".join(hints) or "see the broker's log",
            )
        if rc.is_failure:
            return Check(
                name,
                FAIL,
                f"{where}: the broker refused the connection: {rc} (0x{rc.value:02X})",
                explain_refusal(rc, up),
            )
        lim = BrokerLimits.from_connack(up.protocol, box.get("props"))
        detail = f"{where}: connected; {lim.describe()}"
        if lim.max_qos < 1:
            return Check(
                name,
                FAIL,
                detail,
                "the broker allows only QoS 0, so no delivery can be acknowledged and the "
                "gateway sends nothing: allow QoS 1 for this client (mosquitto: max_qos 1 on "
                "the listener)",
            )
        topic = f"{up.topic_prefix}/{cfg.gateway.id}/telemetry"
        if lim.max_packet_size is not None:
            fit = lim.max_packet_size - publish_overhead(topic, up.protocol)
            if up.max_message_bytes > fit:
                return Check(
                    name,
                    FAIL,
                    detail + f"; uplink.max_message_bytes is {up.max_message_bytes}",
                    f"set uplink.max_message_bytes: {max(4096, fit - 256)} (at most {fit}): "
                    "larger messages would be refused by the broker",
                )
        done.clear()
        probe = f"{up.topic_prefix}/{cfg.gateway.id}/doctor/probe"
        client.publish(probe, b"edgegw doctor probe", qos=1)
        done.wait(timeout)
        ack = box.get("puback")
        if ack is None:
            return Check(
                name,
                FAIL,
                f"{detail}; a QoS 1 publish to {probe} got no PUBACK"
                + (f" (the broker hung up: {box['lost']})" if "lost" in box else ""),
                "an MQTT 3.1.1 broker hangs up on a publish it refuses: allow this user to "
                f"publish to {up.topic_prefix}/{cfg.gateway.id}/# with QoS 1 (ACL, max_qos)",
            )
        if ack.is_failure:
            return Check(
                name,
                FAIL,
                f"{detail}; a QoS 1 publish to {probe} was refused: {ack} (0x{ack.value:02X})",
                f"allow this user to publish to {up.topic_prefix}/{cfg.gateway.id}/# (ACL)",
            )
        if not lim.announced:
            return Check(
                name,
                WARN,
                detail + f"; QoS 1 publish to {probe} acknowledged",
                "MQTT 3.1.1 brokers announce no limits and may acknowledge what their ACL "
                "discards: check the broker's packet size limit against "
                "uplink.max_message_bytes and the user's rights by hand, or use mqtt5",
            )
        return Check(name, PASS, detail + "; QoS 1 publish acknowledged")
    finally:
        with contextlib.suppress(Exception):
            client.disconnect()
        client.loop_stop()


def check_device(
    dev: Any, timeout: float, state_dir: Path | None = None, *, exchange: bool = True
) -> Check:
    """The device's address answers TCP, then one real exchange in its protocol."""
    name = f"device {dev.name}"
    if dev.protocol == "modbus_rtu":
        return check_serial_device(dev, timeout, state_dir, exchange=exchange)
    host, port = getattr(dev, "host", None), getattr(dev, "port", None)
    if not isinstance(host, str) or not isinstance(port, int):
        return Check(name, SKIP, f"{dev.protocol}: no TCP address to check")
    try:
        addrs = (
            [(socket.AF_INET6 if ":" in host else socket.AF_INET, host)]
            if _is_ip(host)
            else (resolve(host, port, timeout))
        )
    except (OSError, TimeoutError) as exc:
        return Check(
            name,
            FAIL,
            f"cannot resolve {host}: {exc}",
            "check the device's host in the config, or use its IP address",
        )
    last: tuple[str, str] = ("no address", "")
    for family, addr in addrs:
        if _documentation(addr):
            last = (
                f"{addr} is an example address from the documentation, not a device",
                "put the device's real address in its host field",
            )
            continue
        try:
            sock, ms = connect(family, addr, port, timeout)
        except OSError as exc:
            why, fix = why_not_connected(exc, "the device's server", port, timeout)
            last = (f"{_show(addr, port)}: {why}", fix + "; is the device on and cabled?")
            continue
        sock.close()
        where = f"{dev.protocol} {_show(addr, port)}"
        if not exchange:
            return Check(name, PASS, f"{where} connected in {ms:.0f} ms")
        return _exchange(dev, where, state_dir, timeout)
    return Check(name, FAIL, *last)


SERIAL_DROP_IN = "/usr/share/doc/edgegw/examples/edgegw-serial.conf.example"


def check_serial_device(
    dev: Any, timeout: float, state_dir: Path | None = None, *, exchange: bool = True
) -> Check:
    """A Modbus RTU device: its serial port is there, the service user may open it, and
    the first planned request is read through it with the configured line settings."""
    from ..permissions import READ, WRITE, CannotTell, denied, service_account

    name = f"device {dev.name}"
    port = Path(dev.port)
    where = f"modbus_rtu {port} ({dev.line}, unit {dev.unit_id})"
    if not port.exists():
        return Check(
            name,
            FAIL,
            f"{where}: {port} does not exist",
            "is the adapter plugged in? ls -l /dev/serial/by-id/ shows the serial ports by "
            "adapter (a by-id path survives re-plugging): fix the device's port",
        )
    acct = service_account(SERVICE_USER)
    try:
        why = denied(port, acct, READ | WRITE)
    except CannotTell:
        why = None  # the exchange below says it
    if why is not None:
        return Check(
            name,
            FAIL,
            f"{where}: user {acct.name} (the daemon) {why}",
            f"serial ports belong to group dialout: sudo usermod -aG dialout {acct.name}; "
            f"the systemd unit also needs the serial drop-in ({SERIAL_DROP_IN})",
        )
    if not exchange:
        return Check(name, PASS, f"{where}: the port is there and {acct.name} may open it")
    return _exchange(dev, where, state_dir, timeout)


def _exchange(dev: Any, where: str, state_dir: Path | None, timeout: float) -> Check:
    """A real protocol exchange (gateway/probe.py): an S7 config on a Modbus port, a wrong
    unit id or node id all connect over TCP, and fail here."""
    import asyncio

    from ..preflight import EXTRAS, install_hint
    from ..probe import probe

    name = f"device {dev.name}"
    wait = max(timeout, getattr(dev, "timeout_ms", 1000) / 1000) + 1
    try:
        got = asyncio.run(probe(dev, state_dir, wait))
    except ImportError as exc:
        extra, what = EXTRAS.get(dev.protocol, ("", dev.protocol))
        return Check(
            name,
            FAIL,
            f"{where}: the {dev.protocol} driver cannot be loaded ({exc})",
            install_hint(extra, what) if extra else "reinstall edgegw",
        )
    except PermissionError as exc:
        from ..permissions import explain_permission

        return Check(name, FAIL, f"{where}: {explain_permission(exc)}", "see above")
    return Check(name, PASS if got.ok else FAIL, f"{where}: {got.detail}", got.fix)


def check_models(cfg: Config) -> list[Check]:
    """Each bound model loaded in onnxruntime as the daemon loads it (pin, ONNX, shapes
    against its binding, a dry run)."""
    if not cfg.inference.models:
        return []
    from ..preflight import install_hint

    try:
        from inference.model import ModelRefused, load_model
    except ImportError as exc:
        return [
            Check(
                "models",
                FAIL,
                f"{len(cfg.inference.models)} model(s) bound, but the inference engine cannot "
                f"be loaded ({exc})",
                install_hint("inference", "ONNX inference (onnxruntime)"),
            )
        ]
    out = []
    for b in cfg.inference.models:
        name = f"model {b.name}"
        try:
            m = load_model(b, cfg.base_dir, threads=1)
        except ModelRefused as exc:
            out.append(
                Check(
                    name,
                    FAIL,
                    str(exc),
                    "fix the file or the binding named above; the daemon refuses to start with it",
                )
            )
            continue
        out.append(
            Check(
                name,
                PASS,
                f"{m.path}: sha256 pinned, loads in onnxruntime, "
                f"window {b.window} x {len(b.inputs)} inputs runs",
            )
        )
    return out


def check_preflight(cfg: Config, sources: Any) -> list[Check]:
    """What `edgegw validate` finds beyond the syntax (gateway/preflight.py), judged for
    the service user: one row per subject (a driver, a file, a model, the outbox's place,
    one device's tags), each with its own fix. An error there refuses `edgegw run`."""
    from ..permissions import service_account
    from ..preflight import ERROR, Finding, check

    found = check(cfg, sources, account=service_account(SERVICE_USER))
    rows: dict[str, list[Finding]] = {}
    for f in found:
        rows.setdefault(f.row, []).append(f)
    out = []
    for row, items in rows.items():
        bad = any(f.level == ERROR for f in items)
        shown = [f"{f.where}: {f.message}" if f.where else f.message for f in items[:5]]
        if len(items) > 5:
            shown.append(f"... and {len(items) - 5} more (`edgegw validate` lists every one)")
        fix = "; ".join(dict.fromkeys(f.fix for f in items if f.fix))
        if bad:
            fix = (fix or "fix it") + " (until then the daemon refuses to start)"
        out.append(Check(row, FAIL if bad else WARN, "\n".join(shown), fix))
    return out


def _service_ids() -> tuple[int, set[int], str]:
    """The uid, group ids and name the daemon runs as (the service user when it exists,
    else whoever runs doctor)."""
    import grp

    uid, user = _expected_owner()
    try:
        pw = pwd.getpwuid(uid)
        gids = {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    except KeyError:
        gids = {os.getegid()}
    return uid, gids, user


def _may(st: os.stat_result, uid: int, gids: set[int], bits: int) -> bool:
    """Whether a user may do ``bits`` (4 read, 2 write, 1 search) by the mode bits."""
    if uid == 0:
        return True
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid == uid:
        return bool((mode >> 6) & bits == bits)
    if st.st_gid in gids:
        return bool((mode >> 3) & bits == bits)
    return bool(mode & bits == bits)


def why_unreadable(path: Path, uid: int, gids: set[int]) -> str | None:
    """None if the user can read ``path`` (every folder on the way searchable, the file
    readable, judged by the mode bits); else where it stops."""
    parts = path.absolute().parts
    for i in range(1, len(parts)):
        folder = Path(*parts[:i])
        try:
            st = folder.stat()
        except OSError:
            return None  # we cannot see either; other rows name it
        if not _may(st, uid, gids, 1):
            return (
                f"folder {folder} ({_owner_name(st.st_uid)}, mode {stat.S_IMODE(st.st_mode):04o})"
            )
    try:
        st = path.stat()
    except OSError:
        return None
    if not _may(st, uid, gids, 4):
        return f"{path} ({_owner_name(st.st_uid)}, mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def check_service_access(cfg: Config, config_path: str) -> Check:
    """Every file the daemon reads, judged as the service user would see it."""
    name = "file access"
    uid, gids, user = _service_ids()
    files: list[tuple[str, Path]] = [("the config", Path(config_path))]
    up = cfg.uplink
    if up.tls is not None:
        files += [
            (f"uplink.tls.{k}", getattr(up.tls, k)) for k in ("ca_file", "cert_file", "key_file")
        ]
    files.append(("uplink.password_file", up.password_file))
    for d in cfg.devices:
        for k in ("password_file", "server_certificate"):
            files.append((f"{k} of {d.name}", getattr(d, k, None)))
    files += [(f"model {b.name}", b.model_path(cfg.base_dir)) for b in cfg.inference.models]
    key = cfg.state_dir / KEY_FILE
    files.append(("the device key", key))
    blocked = []
    for what, f in files:
        if f is None or not Path(f).exists():
            continue
        why = why_unreadable(Path(f), uid, gids)
        if why is not None:
            blocked.append(f"{what}: {why}")
    if blocked:
        return Check(
            name,
            FAIL,
            f"user {user} (the daemon) cannot read:\n" + "\n".join(blocked),
            f"give {user} read access: chgrp {user} FILE; chmod 640 FILE (folders: chmod "
            "o+x or g+x for the group)",
        )
    return Check(name, PASS, f"user {user} can read the config and every file it names")


STATE_FILES = ("status.json", "status.tmp", "audit.cborseq", "audit.cborseq.resume", "commands.db")
"""Files the daemon writes in the state directory by these names: never a folder."""
MAX_STATE_ENTRIES = 10_000  # a state directory holds tens of files; stop looking after this


def check_state_files(cfg: Config) -> Check:
    """Everything in the state directory (learned Modbus maps, the OPC UA PKI, the outbox
    and its -wal/-shm, the audit log, status.json, the command state, the keys), and the
    outbox's files when they live elsewhere, as the service user sees them: its own, and
    readable and writable by it. A file left to root by a command run with sudo, or made
    read-only, stops the daemon (or one device) at its first write."""
    from ..permissions import READ, SEARCH, WRITE, CannotTell, denied, service_account
    from ..preflight import OUTBOX_SIDE_FILES

    name = "state files"
    acct = service_account(SERVICE_USER)
    state = cfg.state_dir
    if not state.is_dir():
        return Check(name, SKIP, f"{state} is not there yet (see the state dir row)")
    if os.statvfs(state).f_flag & os.ST_RDONLY:
        return Check(name, SKIP, f"{state} is on a read-only file system (see the state dir row)")
    found: list[Path] = []
    hidden: list[str] = []  # folders we may not look into
    for folder, dirs, files in os.walk(state, onerror=lambda e: hidden.append(str(e.filename))):
        found += [Path(folder, n) for n in (*sorted(dirs), *sorted(files))]
        if len(found) >= MAX_STATE_ENTRIES:
            break
    outbox = cfg.outbox_path
    if state not in outbox.parents:
        found += [outbox.with_name(outbox.name + s) for s in ("", *OUTBOX_SIDE_FILES)]
    bad: dict[Path, str] = {}  # path -> what is wrong with it
    fixes: list[str] = []
    seen = 0
    for p in found:
        try:
            st = p.lstat()
        except OSError:
            continue  # gone meanwhile, or an outbox side file that is not there
        seen += 1
        if stat.S_ISLNK(st.st_mode):
            continue  # the daemon makes none; what it points to is judged where it is
        shown = f"{p} ({_owner_name(st.st_uid)}, mode {stat.S_IMODE(st.st_mode):04o})"
        if p.parent == state and p.name in STATE_FILES and not stat.S_ISREG(st.st_mode):
            bad[p] = f"{shown}: a folder where the daemon writes a file"
            fixes.append(f"sudo rm -r {p}")
            continue
        is_dir = stat.S_ISDIR(st.st_mode)
        try:
            why = denied(p, acct, READ | WRITE | SEARCH if is_dir else READ | WRITE)
        except CannotTell:
            hidden.append(str(p))
            continue
        if acct.uid != 0 and st.st_uid != acct.uid:
            bad[p] = f"{shown}: belongs to {_owner_name(st.st_uid)}, the daemon runs as {acct.name}"
            own = f"sudo chown -R {acct.spec} {state}"
            fixes.append(own if state in p.parents else f"sudo chown {acct.spec} {p}")
        elif why is not None:
            bad[p] = f"{shown}: user {acct.name} {why.split(' (')[0]}"
            fixes.append(
                f"sudo chmod -R u+rwX {state}" if state in p.parents else f"sudo chmod u+rw {p}"
            )
    hid = f"cannot look into {', '.join(hidden[:3])}: permission denied" if hidden else ""
    if not bad and hidden:
        return Check(name, WARN, hid, "run as root to check every file: sudo edgegw doctor")
    if not bad:
        where = f"{state}" + ("" if state in outbox.parents else f" and {outbox}")
        return Check(
            name, PASS, f"{seen} file(s) and folder(s) in {where}: {acct.name}'s, writable"
        )
    # every path named, but what is inside a folder named already only counted
    inside = {p: sum(1 for q in bad if p in q.parents) for p in bad}
    top = [p for p in bad if not any(a in bad for a in p.parents)]
    lines = [bad[p] + (f" (and {inside[p]} inside)" if inside[p] else "") for p in top]
    lines = lines[:20] + ([f"... and {len(lines) - 20} more"] if len(lines) > 20 else [])
    return Check(
        name,
        FAIL,
        f"user {acct.name} (the daemon) must own and write these:\n"
        + "\n".join(lines + ([hid] if hid else [])),
        "; ".join(dict.fromkeys(fixes)),
    )


def _mount_type(path: Path) -> str | None:
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    best, fstype = "", None
    target = str(path.resolve())
    for line in mounts:
        parts = line.split()
        if len(parts) >= 3:
            mnt = parts[1].replace("\\040", " ")
            if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(
                best
            ):
                best, fstype = mnt, parts[2]
    return fstype


def check_disk(state_dir: Path) -> Check:
    name = "disk"
    where = state_dir
    while not where.exists() and where != where.parent:
        where = where.parent
    usage = shutil.disk_usage(where)
    pct = 100 * usage.free / usage.total if usage.total else 0.0
    outbox = state_dir / "outbox.db"
    detail = f"{human_bytes(usage.free)} free of {human_bytes(usage.total)} ({pct:.0f}%) at {where}"
    with contextlib.suppress(OSError):
        detail += f"; outbox.db {human_bytes(outbox.stat().st_size)}"
    if usage.free < DISK_FAIL_BYTES:
        return Check(
            name,
            FAIL,
            detail,
            "the outbox cannot hold a long outage: free space (journalctl --vacuum-size=100M, "
            "apt-get clean) or move gateway.state_dir to a larger disk",
        )
    if usage.free < DISK_WARN_BYTES or pct < 10:
        return Check(name, WARN, detail, "little room for the backlog of a long outage: free space")
    fstype = _mount_type(where)
    if fstype in ("tmpfs", "ramfs"):
        return Check(
            name,
            WARN,
            detail + f"; on {fstype}",
            "undelivered data is lost at power-off: put gateway.state_dir on a real disk",
        )
    return Check(name, PASS, detail)


def check_outbox_room(outbox_path: Path, min_free_mib: float) -> Check:
    """The filesystem the outbox is on (its own partition, maybe): room, and whether
    outbox.min_free_mib can work there."""
    name = "outbox disk"
    room = outbox_room(outbox_path, min_free_mib)
    detail = room.describe()
    if (problem := room.problem()) is not None:
        return Check(name, FAIL, detail, problem)
    if room.free <= room.reserve + 2 * 2**20:
        return Check(
            name,
            WARN,
            detail,
            "the outbox's filesystem is full: new data is evicted or refused until there is "
            "room; free space there or lower outbox.max_mib",
        )
    return Check(name, PASS, detail)


def check_daemon(state_dir: Path) -> Check:
    name = "daemon"
    snap, problem = read_snapshot(state_dir)
    fix = "sudo systemctl enable --now edgegw; why it stopped: journalctl -u edgegw -n 50"
    if snap is None:
        path = state_dir / STATUS_FILE
        if state_dir.is_dir() and not path.exists():
            problem = f"not running: no {path} (the daemon writes it every few seconds)"
        return Check(name, WARN, str(problem), fix)
    age = status_age_s(snap)
    if snap.get("final"):
        return Check(name, WARN, f"stopped cleanly {human_duration(age)} ago", fix)
    if age > STALE_AFTER_S:
        return Check(
            name, WARN, f"not running: {state_dir / STATUS_FILE} is {human_duration(age)} old", fix
        )
    up = snap.get("uplink") or {}
    ob = snap.get("outbox") or {}
    devs = snap.get("devices") or {}
    n_up = sum(1 for d in devs.values() if d.get("up"))
    return Check(
        name,
        PASS,
        f"running, pid {snap.get('pid')}; link {'up' if up.get('link_up') else 'DOWN'}; "
        f"{n_up} of {len(devs)} devices up; backlog {ob.get('rows', '?')} messages",
    )


# -- running and printing ----------------------------------------------------------------


def _guarded(name: str, fn: Callable[[], T]) -> T | Check:
    """Run one check; a permission problem or an unexpected error becomes its FAIL row
    (with the path, owner and fix), never a traceback that hides the other rows."""
    try:
        return fn()
    except PermissionError as exc:
        from ..permissions import explain_permission

        return Check(name, FAIL, explain_permission(exc), "run doctor with sudo to see it all")
    except Exception as exc:
        return Check(
            name,
            FAIL,
            f"the check itself failed: {type(exc).__name__}: {exc}",
            "please report this with the config (edgegw doctor --json)",
        )


def _rows(name: str, fn: Callable[[], Any]) -> list[Check]:
    got = _guarded(name, fn)
    return got if isinstance(got, list) else [got]


def run_checks(config: str, timeout: float = 3.0) -> list[Check]:
    checks, cfg = check_config(config)
    if cfg is None:
        return [*checks, check_clock()]
    from ..config import load_config_sourced

    sources = load_config_sourced(config)[1]
    state = cfg.state_dir
    checks += _rows("config files", lambda: check_preflight(cfg, sources))
    for name, fn in (
        ("state dir", lambda: check_state_dir(state)),
        ("device key", lambda: check_key(state)),
        ("file access", lambda: check_service_access(cfg, config)),
        ("state files", lambda: check_state_files(cfg)),
        ("disk", lambda: check_disk(state)),
        ("outbox disk", lambda: check_outbox_room(cfg.outbox_path, cfg.outbox.min_free_mib)),
        ("clock", check_clock),
    ):
        checks += _rows(name, fn)
    checks += _rows("models", lambda: check_models(cfg))
    dns, addrs = check_dns(cfg.uplink.host, cfg.uplink.port, timeout)
    checks.append(dns)

    def one(d: Any) -> Check:
        got = _guarded(f"device {d.name}", lambda: check_device(d, timeout, state))
        return got if isinstance(got, Check) else Check(f"device {d.name}", FAIL, str(got))

    # Devices on serial buses one after another in one thread: a bus carries one request
    # at a time, and the RTU driver shares one link per port within one event loop.
    serial = [d for d in cfg.devices if d.protocol == "modbus_rtu"]
    networked = [d for d in cfg.devices if d.protocol != "modbus_rtu"]
    with ThreadPoolExecutor(max_workers=8) as pool:
        over_ip = pool.map(one, networked)
        on_buses = pool.submit(lambda: [one(d) for d in serial])
        tcp, working = check_broker_tcp(cfg.uplink.host, cfg.uplink.port, addrs, timeout)
        checks += tcp
        checks += _rows("broker TLS", lambda: check_tls(cfg, working, timeout))
        checks += _rows("broker MQTT", lambda: check_mqtt(cfg, working, timeout))
        done = [*over_ip, *on_buses.result()]
        rows = {id(d): c for d, c in zip([*networked, *serial], done, strict=True)}
        checks += [rows[id(d)] for d in cfg.devices]
    checks += _rows("daemon", lambda: check_daemon(state))
    _blame_the_clock(checks)
    return checks


def _blame_the_clock(checks: list[Check]) -> None:
    """A certificate outside its dates on a clock that is not synchronised: the clock
    row fails too, and says why, so it is fixed first."""
    rows = {c.name: c for c in checks}
    tls, clock = rows.get("broker TLS"), rows.get("clock")
    if tls and clock and tls.outcome == FAIL and "NOT synchronised" in tls.detail:
        clock.outcome = FAIL
        clock.detail += "; the broker's certificate dates contradict it"
        clock.fix = (
            "set the clock before anything else: sudo timedatectl set-ntp true (an NTP server "
            "the plant allows: NTP= in /etc/systemd/timesyncd.conf), or timedatectl set-time"
        )


def exit_code(checks: list[Check]) -> int:
    return EXIT_FAILED if any(c.outcome == FAIL for c in checks) else EXIT_OK


_COLOURS = {PASS: "32", WARN: "33", FAIL: "31;1", SKIP: "2"}


def format_report(checks: list[Check], colour: bool = False) -> str:
    width = max(len(c.name) for c in checks)
    out = []
    for c in checks:
        label = c.outcome.upper()
        if colour:
            label = f"\x1b[{_COLOURS[c.outcome]}m{label}\x1b[0m"
        first, *more = c.detail.splitlines() or [""]
        out.append(f"{label}  {c.name:<{width}}  {first}")
        pad = " " * (6 + width + 2)
        out += [pad + line for line in more]
        if c.fix and c.outcome in (WARN, FAIL):
            out.append(f"{pad}→ {c.fix}")
    counts = {k: sum(c.outcome == k for c in checks) for k in (PASS, WARN, FAIL, SKIP)}
    out.append("")
    out.append(
        f"doctor: {counts[PASS]} ok, {counts[WARN]} warning(s), {counts[FAIL]} failure(s)"
        + (f", {counts[SKIP]} skipped" if counts[SKIP] else "")
        + (" — fix the FAIL lines first" if counts[FAIL] else "")
    )
    return "\n".join(out)


def main(args: argparse.Namespace) -> int:
    from .scan import quiet_libraries

    quiet_libraries()  # the device rows say what failed; no library chatter on the terminal
    checks = run_checks(args.config, args.timeout)
    if args.json:
        print(json.dumps([asdict(c) for c in checks], indent=1))
    else:
        colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        print(f"edgegw doctor: {args.config}\n")
        print(format_report(checks, colour))
    return exit_code(checks)
