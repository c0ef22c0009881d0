#!/usr/bin/env bash
# A two-node SLURM cluster on this machine, for the launch tests (needs root).
#   tests/slurm_cluster.sh start DIR   installs Debian's slurm + munge when missing, writes
#                                      DIR/slurm.conf, starts munged, slurmctld, slurmd n1/n2
#   tests/slurm_cluster.sh stop DIR    stops exactly the daemons it started (by their pids)
# Clients then need SLURM_CONF=DIR/slurm.conf.
set -euo pipefail
action=${1:?usage: slurm_cluster.sh start|stop DIR}
dir=${2:?usage: slurm_cluster.sh start|stop DIR}

stop() {
  for pidfile in "$dir"/run/*.pid; do
    [ -f "$pidfile" ] || continue
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  done
}

if [ "$action" = stop ]; then
  stop
  exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client munge >/dev/null
fi
mkdir -p "$dir/state" "$dir/spool" "$dir/log" "$dir/run"
for node in n1 n2; do
  grep -qE "^127\.0\.0\.1[[:space:]]+$node\$" /etc/hosts || echo "127.0.0.1 $node" >>/etc/hosts
done

# munge: a key and a socket of our own, run as the munge user, in a folder that user can
# reach (DIR may sit below a root-only folder)
munge_dir=/tmp/stpdist-munge-$(echo "$dir" | md5sum | cut -c1-12)
mkdir -p "$munge_dir"
key=$munge_dir/munge.key
[ -f "$key" ] || dd if=/dev/urandom of="$key" bs=1024 count=1 status=none
chown -R munge:munge "$munge_dir"
chmod 711 "$munge_dir"
chmod 400 "$key"
socket=$munge_dir/munge.socket
runuser -u munge -- /usr/sbin/munged --key-file="$key" --socket="$socket" \
  --pid-file="$munge_dir/munged.pid" --log-file="$munge_dir/munged.log" \
  --seed-file="$munge_dir/munged.seed" --force
cp "$munge_dir/munged.pid" "$dir/run/munged.pid"

host=$(hostname -s)
cat >"$dir/slurm.conf" <<CONF
ClusterName=stpdisttest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=16817
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$socket,cred_expire=10
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobRequeue=1
MpiDefault=none
ReturnToService=2
SchedulerParameters=bf_interval=1,sched_interval=2
MinJobAge=4
KillWait=60
NodeName=n[1-2] NodeHostname=$host NodeAddr=127.0.0.1 Port=[17001-17002] CPUs=2 State=UNKNOWN
PartitionName=debug Nodes=n[1-2] Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$dir/slurm.conf
/usr/sbin/slurmctld -f "$SLURM_CONF"
/usr/sbin/slurmd -f "$SLURM_CONF" -N n1
/usr/sbin/slurmd -f "$SLURM_CONF" -N n2
for _ in $(seq 60); do
  if [ "$(sinfo -h -o %T 2>/dev/null | tr -d '\n')" = idle ]; then
    echo "slurm cluster up: $(sinfo -h -o '%D nodes %T')"
    exit 0
  fi
  sleep 0.5
done
echo "slurm cluster did not come up; logs in $dir/log" >&2
tail -n 20 "$dir"/log/*.log >&2 || true
stop
exit 1
