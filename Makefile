# declawd — two commands:  make demo   |   make test
# Both do every set-up step they need on a fresh Debian 12 machine (run as root).

SHELL      := /bin/bash
VENV       := .venv
PY         := $(VENV)/bin/python
DECLAWD    := $(VENV)/bin/declawd
GUARD      := $(abspath ../shared/tools/egress-guard)
STATE_DIR  ?= /var/lib/declawd
APT_PKGS   := nftables runc runsc mmdebstrap debootstrap iproute2 golang-go conntrack \
              uidmap ca-certificates util-linux chromium chromium-driver postgresql \
              sshfs openssh-server
PYTEST     := $(VENV)/bin/pytest
export DECLAWD_STATE_DIR := $(STATE_DIR)

.PHONY: all setup system venv envd guard templates catalog demo serve test test-full lint unit \
        integration e2e bench clean-state tools-venv

all: setup

## --- set-up -------------------------------------------------------------------------
setup: system venv envd

system:
	@missing=$$(for p in $(APT_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
	    | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "==> apt-get install $$missing"; \
	  mkdir -p /etc/postgresql-common/createcluster.d /etc/ssh; \
	  echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/declawd.conf; \
	  touch /etc/ssh/sshd_not_to_be_run; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
	    --no-install-recommends $$missing; \
	fi

venv: $(VENV)/.stamp
$(VENV)/.stamp: pyproject.toml
	@echo "==> Python venv in $(VENV)"
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

# checkov, kubernetes-validate and kubectl (kustomize) for tests/unit/test_k8s_manifests.py,
# apart from .venv because checkov pins libraries that would change ours.
TOOLS_VENV := .venv-tools
tools-venv: $(TOOLS_VENV)/.stamp
$(TOOLS_VENV)/.stamp: deploy/k8s/tools-requirements.txt
	@echo "==> validation tools venv in $(TOOLS_VENV)"
	python3 -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/pip install -q --upgrade pip
	$(TOOLS_VENV)/bin/pip install -q -r deploy/k8s/tools-requirements.txt
	touch $@

envd: venv
	@$(PY) -c "from declawd.envd import ensure_envd; from declawd.config import Settings; \
	  print('==> envd', ensure_envd(Settings.from_env().envd_path))"

guard:
	@$(GUARD)

templates: setup
	$(DECLAWD) template ensure-builtin base python

catalog: setup
	$(DECLAWD) template ensure-builtin base python node code-interpreter

## --- the two commands ---------------------------------------------------------------
demo: setup guard templates
	@scripts/demo.sh

# The lab and the server in the foreground for exploring (dashboard URL and dev key printed)
# until Ctrl-C; nothing is left running.
serve: setup guard templates
	@scripts/serve.sh

test: setup guard catalog lint tools-venv
	$(PYTEST) -q -p no:cacheprovider tests/unit tests/integration tests/e2e

test-full: setup guard catalog lint tools-venv
	DECLAWD_TEST_FULL=1 $(PYTEST) -q -p no:cacheprovider tests

lint: venv
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/ruff format --check src tests bench examples
	$(VENV)/bin/mypy

unit: venv tools-venv
	$(PYTEST) -q tests/unit

bench: setup guard templates
	@scripts/bench.sh
