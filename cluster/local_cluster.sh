#!/usr/bin/env bash
# Thin wrapper: a head + N worker-node Ray cluster on this machine (loopback), stopped by PID/process group.
#   cluster/local_cluster.sh start --workers 1 --cpus 1 --state-dir /tmp/armada-cluster
#   cluster/local_cluster.sh status --state-dir /tmp/armada-cluster
#   cluster/local_cluster.sh stop --state-dir /tmp/armada-cluster
# Never `ray stop`: it would end every Ray instance of this user, not just this cluster.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
py="${PYTHON:-$here/../.venv/bin/python}"
[ -x "$py" ] || py="$(command -v python3)"
exec "$py" "$here/local_cluster.py" "$@"
