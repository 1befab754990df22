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
              nfs-ganesha nfs-ganesha-vfs rpcbind fuse3 libfuse3-dev libnfs-dev pkg-config gcc
PYTEST     := $(VENV)/bin/pytest
export DECLAWD_STATE_DIR := $(STATE_DIR)

.PHONY: all setup system venv envd nfsfuse guard templates catalog demo serve test test-full lint \
        unit integration e2e bench clean-state tools-venv

all: setup

## --- set-up -------------------------------------------------------------------------
setup: system venv envd nfsfuse

system:
	@missing=$$(for p in $(APT_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
	    | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "==> apt-get install $$missing"; \
	  mkdir -p /etc/postgresql-common/createcluster.d; \
	  echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/declawd.conf; \
	  policy=; if [ ! -e /usr/sbin/policy-rc.d ]; then policy=/usr/sbin/policy-rc.d; \
	    printf '#!/bin/sh\nexit 101\n' > $$policy; chmod 755 $$policy; fi; \
	  rc=0; apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
	    --no-install-recommends $$missing || rc=$$?; \
	  if [ -n "$$policy" ]; then rm -f $$policy; fi; exit $$rc; \
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

# The blob store's NFS client for the cluster tests (tests/shared_fs.py): this kernel has no
# NFS client, so NFS-Ganesha's export is mounted through FUSE by native/nfsfuse.
NFSFUSE := $(VENV)/bin/declawd-nfsfuse
nfsfuse: $(NFSFUSE)
$(NFSFUSE): native/nfsfuse/nfsfuse.c | system $(VENV)/.stamp
	@echo "==> FUSE NFS client $@"
	gcc -O2 -Wall -Wextra -Werror -o $@ $< $$(pkg-config --cflags --libs libnfs fuse3)

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
