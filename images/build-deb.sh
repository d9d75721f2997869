#!/usr/bin/env bash
# Build the edgegw Debian package: the app and its Python dependencies in a venv of their
# own under /opt/edgegw, run by Debian's python3.11 (see images/README.md for why).
#
#   images/build-deb.sh [--arch amd64|arm64|armhf] [--out DIR] [--constraints FILE]
#                       [--extras all|none|opcua,s7,inference] [--revision N]
#                       [--python-version 3.11] [--compress xz|gzip]
#
# Every part is in by default (--extras all: Modbus, OPC UA, S7, ONNX inference), so a
# config that `edgegw validate` passes runs. A smaller package (--extras none: Modbus
# only) says so in its description, and `edgegw validate` names what it lacks.
#
# Needs: bash, a Python >= 3.11 with pip (PYTHON=..., default python3), dpkg-deb, and
# PyPI (wheels only: nothing is compiled, so any architecture builds on any machine).
# Prints the path of the .deb on its last line. Example:
#   images/build-deb.sh --arch arm64 --constraints <(.venv/bin/pip freeze)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
ARCH=""
OUT="$REPO/build/deb"
CONSTRAINTS=""
REVISION=1
PYVER=3.11
EXTRAS=all
COMPRESS=xz
# Who answers for the package: EDGEGW_MAINTAINER, else the last commit's author.
MAINTAINER=${EDGEGW_MAINTAINER:-$(git -C "$(dirname "$0")" log -1 --format='%an <%ae>' 2>/dev/null || true)}
[ -n "$MAINTAINER" ] || MAINTAINER="edgegw maintainers <edgegw@users.noreply.github.com>"

die() { echo "build-deb: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
    --arch) ARCH=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --constraints) CONSTRAINTS=$2; shift 2 ;;
    --revision) REVISION=$2; shift 2 ;;
    --extras) EXTRAS=$2; shift 2 ;;
    --python-version) PYVER=$2; shift 2 ;;
    --compress) COMPRESS=$2; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (try --help)" ;;
    esac
done

command -v dpkg-deb >/dev/null || die "dpkg-deb is missing: apt-get install dpkg"
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null \
    || die "$PYTHON is not Python >= 3.11; set PYTHON=/path/to/python3.11"
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "$PYTHON has no pip"
[ -n "$ARCH" ] || ARCH=$(dpkg --print-architecture 2>/dev/null || echo amd64)

# Debian architecture -> the CPU name in wheel tags; glibc of Debian 12 is 2.36.
case "$ARCH" in
amd64) CPU=x86_64 ;;
arm64) CPU=aarch64 ;;
armhf) CPU=armv7l ;;
*) die "architecture '$ARCH' is not supported: amd64, arm64 or armhf" ;;
esac
PLATFORMS=(--platform "manylinux2014_$CPU")
for minor in $(seq 17 36); do PLATFORMS+=(--platform "manylinux_2_${minor}_$CPU"); done

# Requirements PyPI has no wheel of for this architecture (images/README.md, armhf): taken
# from Debian 12 instead (a Depends, seen through the venv's system site-packages), or left
# out with why. A part whose library is left out is `unavailable` in build_info.json, and
# `edgegw validate` refuses a config that needs it, naming the architectures that have it.
declare -A FROM_DEBIAN=() WITHOUT=() UNAVAILABLE=()
if [ "$ARCH" = armhf ]; then
    # cbor2 6 is Rust only; Debian's 5.4.6 has a C extension (security/strictcbor.py walks
    # the heads itself there, as cbor2 5 has no strict decoder options).
    FROM_DEBIAN[cbor2]="python3-cbor2 (>= 5.4)"
    FROM_DEBIAN[pyyaml]="python3-yaml (>= 6.0)"  # with libyaml, which the config loader uses
    WITHOUT[uvloop]="no armv7l wheel, and Debian 12's python3-uvloop 0.17 is older than 0.19: the daemon runs on asyncio's own event loop"
    WITHOUT[onnxruntime]="no armv7l wheel on PyPI and not in Debian 12"
    WITHOUT[numpy]="needed only by onnxruntime"
    # cryptography's compiled OpenSSL bindings need only cffi's C backend at run time.
    FROM_DEBIAN[cffi]="python3-cffi-backend"
    WITHOUT[pycparser]="needed only by cffi's compiler, not at run time"
    UNAVAILABLE[inference]="onnxruntime has no armhf build: no armv7l wheel on PyPI, none in Debian 12"
fi

VERSION=$("$PYTHON" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$REPO/pyproject.toml")
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || date +%s)}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/edgegw-deb.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
ROOT=$WORK/root
PREFIX=/opt/edgegw
SITE=$PREFIX/lib/python$PYVER/site-packages
DOC=/usr/share/doc/edgegw

echo "build-deb: edgegw $VERSION-$REVISION for $ARCH (python$PYVER)" >&2

# 1. The app as a wheel, built from a copy of the sources (no build/ or egg-info in the
#    work tree, and the files as they are now, committed or not).
mkdir -p "$WORK/src" "$WORK/wheels"
tar -C "$REPO" --exclude=__pycache__ --exclude='*.pyc' -cf - \
    pyproject.toml README.md gateway drivers inference buffer security | tar -C "$WORK/src" -xf -
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$WORK/wheels" "$WORK/src" >&2

# 2. The app and its dependencies into the venv's site-packages, wheels only, for the
#    target's Python and CPU.
PIP_ARGS=(install --quiet --no-compile --target "$ROOT$SITE" --only-binary=:all:
    --implementation cp --python-version "$PYVER" --abi "cp${PYVER/./}" "${PLATFORMS[@]}")
[ -z "$CONSTRAINTS" ] || PIP_ARGS+=(--constraint "$CONSTRAINTS")
WHEEL=$(ls "$WORK"/wheels/edgegw-*.whl)
[ "$EXTRAS" != none ] || EXTRAS=""
# The app's requirements (with the chosen extras), one a line, as in its METADATA.
cat >"$WORK/requires.py" <<'PY'
import re, sys, zipfile
from email.parser import Parser

wheel = zipfile.ZipFile(sys.argv[1])
name = next(n for n in wheel.namelist() if n.endswith("METADATA"))
meta = Parser().parsestr(wheel.read(name).decode())
extras = set(sys.argv[2].split(",")) if sys.argv[2] else set()
if "all" in extras:  # what pyproject's `all` extra names (not `test`)
    extras |= {"opcua", "s7", "inference"}
for req in meta.get_all("Requires-Dist") or []:
    m = re.search(r"extra == .(\w+).", req)
    if m is None or m.group(1) in extras:
        print(req.split(";")[0].strip())
PY
requirements=$("$PYTHON" "$WORK/requires.py" "$WHEEL" "${EXTRAS:-}")
if [ ${#FROM_DEBIAN[@]} = 0 ] && [ ${#WITHOUT[@]} = 0 ]; then
    TARGETS=("$WHEEL${EXTRAS:+[$EXTRAS]}")
else
    # pip cannot be told that Debian provides a requirement (cffi is one of cryptography's),
    # so: resolve the requirements that are neither from Debian nor left out on this
    # machine (which versions; wheels only, --constraints apply), then install each of
    # them for the target without resolving again, less what Debian provides.
    "$PYTHON" -m pip "${PIP_ARGS[@]}" --no-deps "$WHEEL" >&2
    top=()
    while IFS= read -r req; do
        name=$(echo "$req" | sed 's/[<>=!~ ;\[].*//' | tr 'A-Z_.' 'a-z--')
        case "$name" in edgegw | "") continue ;; esac
        [ -n "${FROM_DEBIAN[$name]:-}${WITHOUT[$name]:-}" ] || top+=("$req")
    done <<<"$requirements"
    "$PYTHON" -c 'import sys; assert "%d.%d" % sys.version_info[:2] == sys.argv[1]' "$PYVER" \
        || die "$PYTHON must be python$PYVER to resolve the requirements for $ARCH"
    "$PYTHON" -m pip install --quiet --dry-run --ignore-installed --only-binary=:all: \
        --report "$WORK/resolved.json" ${CONSTRAINTS:+--constraint "$CONSTRAINTS"} "${top[@]}" >&2 \
        || die "pip could not resolve the requirements for $ARCH: ${top[*]}"
    mapfile -t TARGETS < <("$PYTHON" - "$WORK/resolved.json" "${!FROM_DEBIAN[@]}" "${!WITHOUT[@]}" <<'PY'
import json, re, sys
skip = set(sys.argv[2:])
for item in json.load(open(sys.argv[1]))["install"]:
    meta = item["metadata"]
    if re.sub(r"[-_.]+", "-", meta["name"]).lower() not in skip:
        print(f"{meta['name']}=={meta['version']}")
PY
    )
    PIP_ARGS+=(--no-deps)
fi
if ! "$PYTHON" -m pip "${PIP_ARGS[@]}" "${TARGETS[@]}" >&2; then
    # Name the requirements that have no wheel for this platform.
    missing=$(printf '%s\n' "${TARGETS[@]}" | grep -v '^/' || true)
    [ "${#TARGETS[@]}" != 1 ] || missing=$requirements
    gone=""
    while IFS= read -r req; do
        case "$req" in edgegw*) continue ;; esac
        "$PYTHON" -m pip download --quiet --no-deps -d "$WORK/probe" --only-binary=:all: \
            --implementation cp --python-version "$PYVER" --abi "cp${PYVER/./}" \
            "${PLATFORMS[@]}" "$req" >/dev/null 2>&1 || gone="$gone $req;"
    done <<<"$missing"
    die "pip could not get wheels for $ARCH/python$PYVER (see above). No $CPU wheel on PyPI for:${gone:- (only transitive dependencies, see the pip message above)}"
fi
rm -rf "$ROOT$SITE/bin"  # console scripts with the build machine's interpreter path
# sqlite-utils lists pip for its `install` sub-command, which edgegw never runs: a
# bundled pip would only be a second, unpatched installer on the gateway.
rm -rf "$ROOT$SITE"/pip "$ROOT$SITE"/pip-*.dist-info

# What is in the package, for `edgegw validate` and doctor (gateway/preflight.py).
# Three tables, as name=why lines: Debian packages used, libraries and parts left out.
table() { local -n t=$1; local k; for k in "${!t[@]}"; do printf '%s=%s\n' "$k" "${t[$k]}"; done; }
"$PYTHON" - "$ROOT$SITE" "$ARCH" "${EXTRAS:-none}" "$(table FROM_DEBIAN)" "$(table WITHOUT)" \
    "$(table UNAVAILABLE)" <<'PY'
import json, pathlib, sys
site, arch, extras = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
from_debian, without, unavailable = (
    dict(ln.split("=", 1) for ln in arg.splitlines() if ln) for arg in sys.argv[4:7])
have = {p: any(site.glob(f"{m}/__init__.py")) for p, m in
        (("opcua", "asyncua"), ("s7", "snap7"), ("inference", "onnxruntime"))}
# left_out: parts the builder chose not to include (--extras); unavailable: parts with no
# build for this architecture (armhf: inference). `edgegw validate` words its advice after
# which it is. from_debian / without: libraries taken from Debian 12 or left out, and why.
left_out = {p: f"images/build-deb.sh --extras {extras}" for p, ok in have.items()
            if not ok and p not in unavailable}
info = {"package": "deb", "arch": arch, "extras": extras, "parts": sorted(p for p, ok in have.items() if ok),
        "left_out": left_out, "unavailable": unavailable, "full_on": ["amd64", "arm64"],
        "from_debian": from_debian, "without": without}
(site / "gateway" / "build_info.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
PY
PARTS=$("$PYTHON" -c 'import json, sys; i = json.load(open(sys.argv[1]))
names = {"opcua": "OPC UA", "s7": "Siemens S7", "inference": "ONNX inference"}
print(", ".join(["Modbus TCP/RTU"] + [names[p] for p in i["parts"]]))' "$ROOT$SITE/gateway/build_info.json")

# 3. Make it a venv: pyvenv.cfg and bin/python pointing at Debian's interpreter. This is
#    all `python -m venv` would create (without pip), so python3-venv is not needed.
mkdir -p "$ROOT$PREFIX/bin"
# With libraries from Debian the venv sees Debian's site-packages too, after its own.
SYSTEM_SITE=false
[ ${#FROM_DEBIAN[@]} = 0 ] || SYSTEM_SITE=true
cat >"$ROOT$PREFIX/pyvenv.cfg" <<EOF
home = /usr/bin
include-system-site-packages = $SYSTEM_SITE
version = $PYVER
executable = /usr/bin/python$PYVER
EOF
ln -s "/usr/bin/python$PYVER" "$ROOT$PREFIX/bin/python"
ln -s python "$ROOT$PREFIX/bin/python3"
ln -s python "$ROOT$PREFIX/bin/python$PYVER"
cat >"$ROOT$PREFIX/bin/edgegw" <<EOF
#!$PREFIX/bin/python
import sys

from gateway.cli import main

if __name__ == "__main__":
    sys.exit(main())
EOF
chmod 0755 "$ROOT$PREFIX/bin/edgegw"

# Bytecode now: the service may not write to /opt (ProtectSystem=strict), and a Pi
# should not compile 70 MB of Python at every start. Only a matching interpreter can.
if [ "$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = "$PYVER" ]; then
    "$PYTHON" -m compileall -q -j 0 --invalidation-mode checked-hash \
        -s "$ROOT" -p / "$ROOT$SITE" >&2
else
    echo "build-deb: warning: $PYTHON is not python$PYVER: no bytecode in the package" >&2
fi

# Shared objects: not executable, and without their symbol tables (lintian:
# unstripped-binary-or-object; a Pi's disk is small). Needs this architecture's strip
# (binutils, or binutils-aarch64-linux-gnu / binutils-arm-linux-gnueabihf to cross-build).
case "$ARCH" in
amd64) STRIP=x86_64-linux-gnu-strip ;;
arm64) STRIP=aarch64-linux-gnu-strip ;;
armhf) STRIP=arm-linux-gnueabihf-strip ;;
esac
if ! command -v "$STRIP" >/dev/null && [ "$ARCH" = "$(dpkg --print-architecture 2>/dev/null)" ]; then
    STRIP=strip
fi
find "$ROOT$SITE" -type f \( -name '*.so' -o -name '*.so.*' \) -exec chmod 0644 {} +
if command -v "$STRIP" >/dev/null; then
    # Not the libraries auditwheel vendored into *.libs/: patchelf laid them out in a way
    # strip breaks ("ELF load command address/offset not page-aligned" at import).
    find "$ROOT$SITE" -type f \( -name '*.so' -o -name '*.so.*' \) ! -path '*.libs/*' -print0 \
        | xargs -0 -r "$STRIP" --strip-unneeded 2>/dev/null || true
else
    echo "build-deb: warning: no $STRIP: shared objects are left unstripped" >&2
fi

# 4. System integration.
install -D -m 0644 "$REPO/systemd/edgegw.service" "$ROOT/usr/lib/systemd/system/edgegw.service"
install -D -m 0644 "$REPO/systemd/edgegw.sysusers" "$ROOT/usr/lib/sysusers.d/edgegw.conf"
install -D -m 0644 "$REPO/systemd/edgegw.tmpfiles" "$ROOT/usr/lib/tmpfiles.d/edgegw.conf"
install -D -m 0644 "$REPO/images/debian/config.yaml" "$ROOT/etc/edgegw/config.yaml"
mkdir -p "$ROOT/usr/bin"
ln -s "$PREFIX/bin/edgegw" "$ROOT/usr/bin/edgegw"
install -D -m 0644 "$REPO/images/debian/copyright" "$ROOT$DOC/copyright"
install -D -m 0644 "$REPO/docs/config.md" "$ROOT$DOC/config.md"
install -D -m 0644 "$REPO/images/debian/lintian-overrides" "$ROOT/usr/share/lintian/overrides/edgegw"
# A Debian changelog (policy 12.7), compressed reproducibly.
mkdir -p "$ROOT$DOC"
{
    echo "edgegw ($VERSION-$REVISION) unstable; urgency=medium"
    echo
    echo "  * edgegw $VERSION packaged with its Python dependencies under /opt/edgegw."
    echo "    Parts: $PARTS."
    echo
    echo " -- $MAINTAINER  $(date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n >"$ROOT$DOC/changelog.Debian.gz"
chmod 0644 "$ROOT$DOC/changelog.Debian.gz"
install -D -m 0644 "$REPO/README.md" "$ROOT$DOC/README.md"
install -D -m 0644 "$REPO/images/README.md" "$ROOT$DOC/README.images.md"
install -D -m 0644 "$REPO/systemd/edgegw-serial.conf.example" \
    "$ROOT$DOC/examples/edgegw-serial.conf.example"
"$PYTHON" - "$ROOT$SITE" >"$ROOT$DOC/bundled-packages.txt" <<'PY'
import sys
from importlib.metadata import distributions

print("Python packages bundled in /opt/edgegw (name, version, license):")
for d in sorted(distributions(path=[sys.argv[1]]), key=lambda d: d.metadata["Name"].lower()):
    m = d.metadata
    lic = m.get("License-Expression") or m.get("License") or ""
    if not lic or len(lic) > 60:
        lic = "; ".join(c.split("::")[-1].strip() for c in m.get_all("Classifier") or []
                        if c.startswith("License ::")) or "see its dist-info"
    print(f"{m['Name']} {m['Version']}: {lic}")
PY
if [ ${#FROM_DEBIAN[@]} != 0 ] || [ ${#WITHOUT[@]} != 0 ]; then
    {
        echo
        echo "Not bundled for $ARCH (PyPI has no $CPU wheel):"
        for k in "${!FROM_DEBIAN[@]}"; do echo "$k: from Debian, ${FROM_DEBIAN[$k]} (Depends)"; done
        for k in "${!WITHOUT[@]}"; do echo "$k: left out: ${WITHOUT[$k]}"; done
    } >>"$ROOT$DOC/bundled-packages.txt"
fi

# 5. Package metadata. The lowest glibc the wheels accept is what we depend on.
GLIBC=$("$PYTHON" - "$ROOT$SITE" <<'PY'
import pathlib, re, sys
best = (2, 17)
for wheel in pathlib.Path(sys.argv[1]).glob("*.dist-info/WHEEL"):
    tags = re.findall(r"^Tag: .*-manylinux_(\d+)_(\d+)_", wheel.read_text(), re.M)
    if tags:  # a wheel lists every manylinux tag it satisfies: the lowest one counts
        best = max(best, min((int(a), int(b)) for a, b in tags))
print("%d.%d" % best)
PY
)
mkdir -p "$ROOT/DEBIAN"
install -m 0755 "$REPO/images/debian/postinst" "$REPO/images/debian/prerm" \
    "$REPO/images/debian/postrm" "$ROOT/DEBIAN/"
echo /etc/edgegw/config.yaml >"$ROOT/DEBIAN/conffiles"
SIZE=$(du -sk --exclude=DEBIAN "$ROOT" | cut -f1)
DEPENDS="python$PYVER, libc6 (>= $GLIBC)"
for k in "${!FROM_DEBIAN[@]}"; do DEPENDS="$DEPENDS, ${FROM_DEBIAN[$k]}"; done
NOT_IN=""  # a paragraph of the description: what this architecture's package lacks
if [ ${#UNAVAILABLE[@]} != 0 ]; then
    NOT_IN=$(for k in "${!UNAVAILABLE[@]}"; do printf '%s ' "Not in the $ARCH package: $k (${UNAVAILABLE[$k]});"; done
        printf '%s' "edgegw validate refuses a config that needs it.")
    NOT_IN=$(echo "$NOT_IN" | fold -s -w 72 | sed 's/ *$//; s/^/ /'; echo " .")
fi
cat >"$ROOT/DEBIAN/control" <<EOF
Package: edgegw
Version: $VERSION-$REVISION
Architecture: $ARCH
Maintainer: $MAINTAINER
Installed-Size: $SIZE
Depends: $DEPENDS
Recommends: systemd, systemd-timesyncd | time-daemon
Section: net
Priority: optional
Description: industrial edge gateway: PLC polling, signed store-and-forward over MQTT
 edgegw polls PLCs and sensors, signs every batch of readings when it is
 acquired (COSE_Sign1, Ed25519), keeps it in a SQLite outbox until the
 platform has acknowledged it, and forwards it over MQTT (TLS, IPv6 first).
 .
 This package includes: $PARTS.
 .
${NOT_IN:+$NOT_IN
} The application and its Python dependencies live in a venv of their own
 under /opt/edgegw, run by Debian's python$PYVER. The systemd unit
 edgegw.service runs it hardened as user edgegw; it is not started until
 configured: edit /etc/edgegw/config.yaml, run 'edgegw validate' and
 'edgegw doctor', then 'systemctl enable --now edgegw'.
EOF
(cd "$ROOT" && find . -type f ! -path ./DEBIAN/\* -printf '%P\0' | LC_ALL=C sort -z \
    | xargs -0 md5sum) >"$ROOT/DEBIAN/md5sums"

mkdir -p "$OUT"
DEB="$OUT/edgegw_${VERSION}-${REVISION}_${ARCH}.deb"
case "$COMPRESS" in
xz) ZARGS=(-Zxz) ;;
gzip) ZARGS=(-Zgzip -z1) ;;  # fast, for tests; the content is the same
*) die "--compress: xz or gzip" ;;
esac
dpkg-deb --root-owner-group "${ZARGS[@]}" --build "$ROOT" "$DEB" >&2
echo "build-deb: $(du -h "$DEB" | cut -f1) $(basename "$DEB"), installed size $((SIZE / 1024)) MiB" >&2
echo "$DEB"
