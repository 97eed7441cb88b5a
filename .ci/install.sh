#!/usr/bin/env bash
# .ci/install.sh — system packages dynsup's tests need, on a fresh Debian 12, as root.
# Non-interactive and idempotent: when everything is already installed it does
# nothing (no apt-get update either), so re-running it in CI (and before every
# `npm test`, see .ci/pretest.sh) is cheap. `--check`: only list what is missing
# (exit 1 if anything is), no root needed.
#
#   dash, bash                    the shells shell quoting is tested through (test/unit/shell-quote.test.ts)
#   nats-server, etcd-server      the control plane the supervisor starts
#   openssh-server/-client        lab nodes' sshd, ssh, ssh-keygen (scripts/testbed/lab.sh)
#   openssh-sftp-server           sftp subsystem named in the lab's sshd_config (also a Depends of openssh-server)
#   iproute2                      ip netns / veth / bridge (scripts/testbed/lab.sh)
#   slurm-wlm, munge              real Slurm testbed (scripts/testbed/slurm-testbed.sh)
#   util-linux                    flock, unshare (both scripts)
#   procps, psmisc                pgrep/pkill/ps, fuser/killall for tests and debugging
#   curl, ca-certificates         health endpoints in tests
#   openssl                       the CA and certificates of controlPlane.etcd.tls (test/integration/etcd-tls.test.ts);
#                                 optional priority in Debian, though ca-certificates pulls it in
#   chromium                      the web view's browser test (test/integration/ui.test.ts drives it with
#                                 puppeteer-core, which downloads no browser of its own)
#   openmpi-bin, python3-mpi4py   real Open MPI for gangs (launch: mpi) and the MPI_ERR_SPAWN test
#   libpmix-dev                   libpmix.so, which Slurm's mpi/pmix plugin dlopens (srun --mpi=pmix)
set -euo pipefail

PACKAGES=(
  dash bash
  nats-server etcd-server
  openssh-server openssh-client openssh-sftp-server
  slurm-wlm munge
  iproute2 util-linux procps psmisc
  curl ca-certificates openssl
  chromium
  openmpi-bin python3-mpi4py libpmix-dev
)

missing=()
for p in "${PACKAGES[@]}"; do
  if [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true) != "install ok installed" ]]; then
    missing+=("$p")
  fi
done

if [[ ${1:-} == --check ]]; then
  if ((${#missing[@]} > 0)); then echo ".ci/install.sh: missing ${missing[*]}" >&2; exit 1; fi
  exit 0
fi

[[ $(id -u) == 0 ]] || { echo ".ci/install.sh: must run as root" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive

if ((${#missing[@]} > 0)); then
  echo ".ci/install.sh: installing ${missing[*]}"
  apt-get update -q
  # Dpkg options: keep existing config files on re-runs instead of prompting.
  apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${PACKAGES[@]}"
else
  echo ".ci/install.sh: all packages already installed"
fi

# The binaries the scripts call by path or name, so a broken install fails here
# rather than deep inside a test.
for b in dash bash /usr/sbin/sshd ssh ssh-keygen ip flock unshare nats-server etcd \
         /usr/sbin/munged /usr/sbin/slurmctld /usr/sbin/slurmd sinfo srun sbatch scontrol chromium mpirun; do
  command -v "$b" >/dev/null || { echo ".ci/install.sh: $b missing after install" >&2; exit 1; }
done
