#!/usr/bin/env bash
# Sets up everything cfnet needs on a Debian 12 machine, as root, idempotently:
# Debian packages, a running PostgreSQL with a `cfnet` role for the tests, and a virtualenv in
# .venv with cfnet and its test dependencies installed.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/setup.sh: run as root (it installs packages and creates network namespaces)" >&2
  exit 1
fi

packages=(python3 python3-venv python3-dev gcc iproute2 nftables libnftables1 iptables conntrack
          postgresql containernetworking-plugins iperf3 tcpdump procps kmod iputils-ping)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# PostgreSQL: start the packaged cluster and make a superuser role for the tests.
version=$(pg_lsclusters -h 2>/dev/null | awk 'NR==1 {print $1}')
if [ -z "$version" ]; then
  version=$(ls /usr/lib/postgresql | sort -n | tail -1)
  pg_createcluster "$version" main >/dev/null
fi
pg_ctlcluster "$version" main start 2>/dev/null || true
for _ in $(seq 50); do pg_isready -q -h 127.0.0.1 && break; sleep 0.2; done
pg_isready -q -h 127.0.0.1 || { echo "setup: PostgreSQL did not start" >&2; exit 1; }
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='cfnet'\"" | grep -q 1 ||
  su postgres -c "psql -qc \"CREATE ROLE cfnet LOGIN SUPERUSER PASSWORD 'cfnet'\""

# The kernel modules the data path uses (already built in on many kernels). ifb with
# numifbs=0: by default loading it creates ifb0/ifb1 in the machine's own namespace.
for m in vxlan veth sch_tbf act_mirred nf_tables; do modprobe -q "$m" 2>/dev/null || true; done
modprobe -q ifb numifbs=0 2>/dev/null || true

python_bin=$(command -v python3)
if [ ! -x .venv/bin/python ]; then
  "$python_bin" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/pip install -q -e '.[test]' 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -c "import cfnet, nftables, pyroute2" || { echo "setup: cfnet did not install" >&2; exit 1; }
echo "setup: ready (.venv/bin/cfnet)"
