# The two commands of the README: `make demo` and `make test`. Both set everything up first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages the demo and the tests use: the broker, systemd-analyze (the unit's
# hardening score), debootstrap (the .deb is installed into a Debian chroot), gcc and
# libmodbus-dev (a Modbus server on libmodbus, a second implementation to test against),
# PostgreSQL (the receiver's fleet store; tests run a private server as an unprivileged user),
# python3-cbor2 (Debian's cbor2 5, which the armhf package runs on: the strict decoder's
# walk path is tested against it).
DEB_PACKAGES := mosquitto systemd debootstrap gcc pkg-config libmodbus-dev postgresql python3-cbor2
# The .deb build-and-install test needs root (debootstrap): on by default as root.
EDGEGW_DEB_TEST ?= $(shell [ "$$(id -u)" = 0 ] && echo 1)
export EDGEGW_DEB_TEST

.PHONY: demo test setup deps lint bench clean deb mutate mutate-fast config-doc

setup: deps $(STAMP)

$(STAMP): pyproject.toml | deps
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# Install only what is missing (apt, as root or with sudo).
deps:
	@missing=""; \
	command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	command -v systemd-analyze >/dev/null 2>&1 || missing="$$missing systemd"; \
	command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || missing="$$missing debootstrap"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	$(PY) -c "import ensurepip, venv" >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	command -v gcc >/dev/null 2>&1 || missing="$$missing gcc"; \
	command -v strace >/dev/null 2>&1 || missing="$$missing strace"; \
	command -v pkg-config >/dev/null 2>&1 || missing="$$missing pkg-config"; \
	pkg-config --exists libmodbus 2>/dev/null || missing="$$missing libmodbus-dev"; \
	/usr/bin/python3 -c "import cbor2" >/dev/null 2>&1 || missing="$$missing python3-cbor2"; \
	if [ -n "$$missing" ]; then \
	  echo "installing (apt):$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

demo: setup
	$(BIN)/edgegw demo $(DEMO_ARGS)

test: setup
	$(BIN)/ruff check .
	$(BIN)/pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	$(BIN)/python benchmarks/e2e.py

deb:
	images/build-deb.sh

# Mutation testing (not in CI: it takes a while): [tool.mutmut] in pyproject.toml says what
# is mutated and which tests judge it. Prints the survivors.
mutate: setup
	$(BIN)/pip install --quiet 'mutmut>=3.8,<4'
	$(BIN)/mutmut run $(MUTANTS) || true
	$(BIN)/mutmut results

# The faster pass the counts in docs/mutation/ come from: one module's set at a time
# (forwarder, receiver, buffer, pipeline; tests/fastmut.py SETS), several mutants side by
# side, resumable. Results: mutants/$(MODULE)-res.jsonl (show: tests/fastmut.py show).
MODULE ?= forwarder
mutate-fast: setup
	$(BIN)/pip install --quiet 'mutmut>=3.8,<4'
	$(BIN)/python tests/fastmut.py module $(MODULE) mutants/$(MODULE)-res.jsonl

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

# docs/config.md is written from the config models (a test fails when they drift).
config-doc: $(STAMP)
	$(BIN)/python -m gateway.configdoc > docs/config.md
