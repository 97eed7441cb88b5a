#!/bin/sh
# dynsup node agent: runs ONE worker under a lease. POSIX sh + coreutils + setsid only, so any node can run it.
#
#   sh node-agent.sh RUNDIR NAME
#
# RUNDIR/NAME.spec (written by the head, mode 0600, sourced here) sets:
#   A_MODE=pipe|spool   pipe: worker output on our stdout; spool: appended to A_OUT (resumable)
#   A_OUT=              spool file (default RUNDIR/NAME.out)
#   A_LEASE=30          seconds without a change of RUNDIR/heartbeat's content before the worker is stopped
#   A_GRACE=10          seconds between the stop signal and SIGKILL of the group
#   A_SIG=TERM          stop signal
#   A_WATCH_PID=        (pipe mode) stop at once when this pid (the supervisor) is gone
#   A_UNSET='SLURM_*'   patterns of variables removed before the worker's own env is applied
#   A_CWD=              working directory
#   a_env()             function exporting the worker's variables
#   set -- argv...      the worker's command line
# Why a spec file rather than arguments: values (tokens) never show up in `ps` on the node, and quoting
# is done once, by the head, with single quotes.
#
# Control lines go to stderr: "dynsup-agent pid PID", "dynsup-agent exit RC". The worker leads its own
# session/process group (setsid), so PID is also its pgid; everything it starts is killed with it.
set -u
rundir=$1
name=$2
spec="$rundir/$name.spec"
[ -r "$spec" ] || { echo "dynsup-agent error: no spec $spec" >&2; exit 127; }
A_MODE=pipe A_LEASE=30 A_GRACE=10 A_SIG=TERM A_WATCH_PID='' A_UNSET='' A_CWD='' A_OUT=''
. "$spec"
hb="$rundir/heartbeat"

# Drop inherited variables matching A_UNSET (awk's ENVIRON lists names exactly, even with odd values).
if [ -n "$A_UNSET" ]; then
  for k in $(awk 'BEGIN { for (k in ENVIRON) print k }'); do
    set -f
    for p in $A_UNSET; do
      set +f
      # shellcheck disable=SC2254
      case "$k" in $p) unset "$k" 2>/dev/null ;; esac
      set -f
    done
    set +f
  done
fi
if [ -n "$A_CWD" ]; then cd "$A_CWD" || { echo "dynsup-agent error: cannot cd to $A_CWD" >&2; exit 126; }; fi

# Is any live (non-zombie) process left in group $1? Zombies count for `kill -0`, and an init that reaps
# slowly would make us wait for processes that are already dead.
group_alive() {
  kill -0 -"$1" 2>/dev/null || return 1
  [ -r /proc/self/stat ] || return 0
  cat /proc/[0-9]*/stat 2>/dev/null | awk -v g="$1" '{ sub(/^.*\) /, ""); if ($3 == g && $1 != "Z") { f = 1; exit } } END { exit !f }'
}

# Is process $1 alive (a zombie is not)? Shell builtins only: the watchdog calls this every second.
proc_alive() {
  kill -0 "$1" 2>/dev/null || return 1
  [ -r "/proc/$1/stat" ] || return 0
  st=''
  { read -r st <"/proc/$1/stat"; } 2>/dev/null || return 1
  st=${st##*) }
  [ "${st%% *}" != Z ]
}

# Stop the whole group: signal, wait up to the grace for every member to leave, then SIGKILL.
stop_group() {
  kill -"$1" -"$pid" 2>/dev/null || return 0
  t=0
  while group_alive "$pid"; do
    [ "$t" -ge $((A_GRACE * 10)) ] && { kill -KILL -"$pid" 2>/dev/null; return 0; }
    sleep 0.1; t=$((t + 1))
  done
}

# The lock is held for the agent's lifetime: `flock -s NAME.lock true` on the node returns the moment the
# worker is gone, which is how a re-attaching head learns of an exit without polling.
exec 9>"$rundir/$name.lock"
flock -x 9
if [ "$A_MODE" = spool ]; then
  # Detached from any ssh channel: only the lease or an explicit signal stops us, never a dropped link.
  trap '' HUP
  # The spool exists before the pid is reported: a reader's `tail -f` must not find it missing.
  out=${A_OUT:-$rundir/$name.out}
  : >>"$out"
  (a_env; exec setsid "$@") >>"$out" 2>&1 </dev/null 9>&- &
else
  (a_env; exec setsid "$@") 2>&1 </dev/null 9>&- &
fi
pid=$!
echo "$pid" >"$rundir/$name.pid"
echo "dynsup-agent pid $pid" >&2

# Watchdog: the lease. Runs beside the worker; it is the only thing that can stop an unsupervised worker.
# The head rewrites RUNDIR/heartbeat with new content every few seconds; a lease is A_LEASE seconds
# (loop turns of at least a second) without a change. Content, not mtime: no clock is compared, so a
# node's clock skew (or an NFS server's, for srun) cannot expire or stretch it, and the loop needs no
# process but `sleep`: it runs for every worker, every second.
agent=$$
(
  trap '' PIPE HUP
  # Killed when the worker exits: take the pending sleep along, so nothing of ours outlives the agent.
  s=''
  trap '[ -n "$s" ] && kill "$s" 2>/dev/null; exit 0' TERM
  last='' missed=0
  while kill -0 "$pid" 2>/dev/null; do
    # The agent itself killed (kill -9)? Its worker must not outlive it unsupervised.
    proc_alive "$agent" || { stop_group "$A_SIG"; exit 0; }
    if [ -n "$A_WATCH_PID" ] && ! proc_alive "$A_WATCH_PID"; then
      stop_group "$A_SIG"; exit 0
    fi
    beat=''
    { read -r beat <"$hb"; } 2>/dev/null
    if [ "$beat" != "$last" ]; then
      last=$beat missed=0
    else
      missed=$((missed + 1))
      if [ "$missed" -gt "$A_LEASE" ]; then
        echo "$(date -u +%FT%TZ) $name: lease expired (heartbeat unchanged for ${missed}s), stopping pgid $pid" >>"$rundir/agent.log"
        stop_group "$A_SIG"; exit 0
      fi
    fi
    sleep 1 & s=$!
    wait "$s"
  done
) </dev/null >/dev/null 2>&1 9>&- &
watchdog=$!

# If we are told to stop, the worker stops with us (never leave it behind).
trap 'stop_group "$A_SIG"' TERM INT
[ "$A_MODE" = spool ] || trap 'stop_group "$A_SIG"' HUP
trap '' PIPE
rc=0
wait "$pid" || rc=$?
# `wait` returns early (>128) when a trapped signal arrives; wait again until the leader is really gone.
while kill -0 "$pid" 2>/dev/null; do wait "$pid" && rc=0 || rc=$?; done
kill "$watchdog" 2>/dev/null
# The leader is gone: anything it left in its group goes too (children holding GPUs or our stdout).
stop_group TERM
echo "$rc" >"$rundir/$name.exit.tmp" && mv -f "$rundir/$name.exit.tmp" "$rundir/$name.exit"
echo "dynsup-agent exit $rc" >&2 2>/dev/null
exit "$rc"
