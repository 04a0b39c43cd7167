#!/usr/bin/env bash
# A one-node SLURM cluster on this Debian/Ubuntu machine, for trying the sbatch templates (and their requeue) end
# to end without a real cluster. Run as root: `sudo scripts/slurm/local_cluster.sh`. Safe to run again: it
# installs only what is missing, keeps an existing /etc/slurm/slurm.conf it did not write, and starts only the
# daemons that are not answering. Exit status 2 means "cannot here" (not root, no apt, no package source).
set -euo pipefail

cannot() { echo "local_cluster.sh: cannot set up SLURM here: $*" >&2; exit 2; }

ready() { scontrol ping 2>/dev/null | grep -q UP && sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; }

if command -v scontrol >/dev/null && ready; then
  echo "local_cluster.sh: SLURM already up: $(sinfo -h -o '%N %c CPUs %T')"
  exit 0
fi
[ "$(id -u)" = 0 ] || cannot "must run as root (it installs packages and starts munged, slurmctld, slurmd)"

if ! command -v slurmd >/dev/null || ! command -v slurmctld >/dev/null || ! command -v sbatch >/dev/null \
   || ! command -v munged >/dev/null; then
  command -v apt-get >/dev/null || cannot "no apt-get (this script knows Debian/Ubuntu only)"
  apt-get update -qq || cannot "apt-get update failed (no network to the package mirror?)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmd slurmctld slurm-client munge >/dev/null \
    || cannot "apt-get install slurmd slurmctld slurm-client munge failed"
fi

# munge authenticates every SLURM message; the package creates its key on most releases, not on all.
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --keyfile /etc/munge/munge.key 2>/dev/null \
    || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
fi
mkdir -p /run/munge && chown munge:munge /run/munge
munge -n 2>/dev/null | unmunge >/dev/null 2>&1 || runuser -u munge -- munged

conf=/etc/slurm/slurm.conf
marker="# written by scripts/slurm/local_cluster.sh"
if [ ! -f "$conf" ] || grep -qF "$marker" "$conf"; then
  mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
  host=$(hostname -s)
  # The node line is what slurmd detects here (CPUs, sockets, cores, memory).
  cat > "$conf" <<EOF
$marker
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobRequeue=1
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
$(slurmd -C | head -n 1)
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
fi

scontrol ping 2>/dev/null | grep -q UP || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 30); do
  if ready; then
    echo "local_cluster.sh: SLURM up: $(sinfo -h -o '%N %c CPUs %T')"
    exit 0
  fi
  sleep 1
done
cannot "daemons started but the node is not idle after 30 s; see /var/log/slurm/slurmctld.log and slurmd.log"
