#!/usr/bin/env bash
# make bench: the benchmark suite (bench/run_all.py) against its own lab + server, which it
# starts and stops itself; `--quick` for small samples (a few minutes), `--only a,b` to pick.
# Instance/port/state dir/pool: DECLAWD_BENCH_{INSTANCE,PORT,STATE_DIR,POOL}.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "bench: needs root (namespaces, nftables, runc)" >&2; exit 1; fi
if [ -x ../shared/tools/egress-guard ]; then ../shared/tools/egress-guard >/dev/null; fi
exec .venv/bin/python bench/run_all.py "$@"
