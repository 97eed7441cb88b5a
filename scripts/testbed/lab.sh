#!/usr/bin/env bash
# lab.sh — a lab of N "nodes" on this machine, for dynsup's integration tests.
#
# Each node labI is a network namespace dynsup-labI, plugged into the bridge
# dynsup-br0 through a veth pair (host side dsl-hI, node side eth0), addressed
# 10.99.0.(10+I)/24 with the head (bridge) at 10.99.0.1, and running its own real
# sshd on port 22 that accepts DIR/id_ed25519 for the lab's test user. The ssh client
# side only ever uses files in DIR (key, known_hosts), so ~/.ssh is never touched. sshd
# also gets its own UTS namespace, so `hostname` in a session on labI prints labI.
# Everything else (filesystem, pids, users) is shared with the host.
# Nodes have no default route: they reach the head and each other, nothing else.
#
# Logins: the test user dynsup-t (shell /bin/sh, empty home, no rc files; created by
# scripts/testbed/test-user.sh), never this machine's root with its dotfiles. --rc-user also
# authorizes dynsup-rc, whose bash rc files are slow and noisy on purpose (a real-world
# login). --root-login also authorizes root (the benchmarks compare against it; tests
# do not use it). Keys are per user: DIR/authorized_keys.USER.
#
# What workers run on the nodes must be readable by the test user, and the repository
# may not be (cloned under /root, mode 0700): `up` copies test/fixtures/workers,
# scripts/demo and the node_modules packages they import into DIR/share (world-
# readable), e.g. DIR/share/test/fixtures/workers/lab-worker.mjs.
#
#   scripts/testbed/lab.sh up N [--dir DIR] [--rc-user] [--root-login]
#                                       build the lab (tears down a stale one first)
#   scripts/testbed/lab.sh down [--dir DIR]     stop everything, remove namespaces/links
#   scripts/testbed/lab.sh status [--dir DIR]   show what is up
#   scripts/testbed/lab.sh link NODE down|up    cut / restore a node's link (partitions)
#
# Outputs (in DIR, default /tmp/dynsup-lab): lab.env (shell-sourceable), nodes.json,
# id_ed25519{,.pub}, known_hosts, authorized_keys.USER, share/,
# nodes/labI/{sshd_config,host key,sshd.pid,sshd.log}.
#
# Namespaces, the bridge and the addresses are machine-global, so there is one lab
# per machine at a time; commands are serialised with a lock so concurrent callers
# cannot interleave half-built labs (test/helpers/lab.ts additionally holds a lock
# for a lab's whole lifetime). LAB_UP_TIMEOUT_S (default 60) bounds the wait for sshd.
set -euo pipefail

readonly BRIDGE=dynsup-br0
readonly NET_PREFIX=10.99.0
readonly HEAD_ADDR=10.99.0.1
readonly NS_PREFIX=dynsup-lab
readonly VETH_PREFIX=dsl-h          # host-side veth; "dsl-h200" fits IFNAMSIZ (15)
readonly MAX_NODES=200              # 10+200 stays inside the /24
readonly LOCK_FILE=/run/dynsup-lab.lock
readonly SSHD=/usr/sbin/sshd        # sshd must be started by absolute path (it re-execs itself)
readonly REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
UP_TIMEOUT_S=${LAB_UP_TIMEOUT_S:-60}   # for every sshd to accept logins, seconds

DIR=/tmp/dynsup-lab
RC_USER=0      # --rc-user
ROOT_LOGIN=0   # --root-login
LAB_USER=""    # set by do_up: the test user every node accepts

log() { printf '[lab] %s\n' "$*" >&2; }
die() { printf '[lab] error: %s\n' "$*" >&2; exit 1; }

usage() {
  cat >&2 <<EOF
usage: $0 up N [--dir DIR] [--rc-user] [--root-login]
       $0 down [--dir DIR]
       $0 status [--dir DIR]
       $0 link NODE down|up [--dir DIR]
EOF
  exit 2
}

node_addr() { echo "${NET_PREFIX}.$((10 + $1))"; }

# Kills every process in a namespace: TERM first so sshd & co. can clean up, KILL
# after a short grace period. Polls instead of sleeping a fixed time.
kill_netns_procs() {
  local ns=$1 pids deadline
  pids=$(ip netns pids "$ns" 2>/dev/null || true)
  [[ -z $pids ]] && return 0
  # shellcheck disable=SC2086  # word splitting of the pid list is intended
  kill -TERM $pids 2>/dev/null || true
  deadline=$((SECONDS + 3))
  while (( SECONDS < deadline )); do
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    [[ -z $pids ]] && return 0
    sleep 0.05
  done
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null || true
  deadline=$((SECONDS + 3))
  while (( SECONDS < deadline )); do
    [[ -z $(ip netns pids "$ns" 2>/dev/null || true) ]] && return 0
    sleep 0.05
  done
  log "warning: processes still in $ns: $(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')"
}

lab_namespaces() { ip netns list 2>/dev/null | awk -v p="^${NS_PREFIX}[0-9]+$" '$1 ~ p {print $1}'; }
lab_veths() { ip -o link show 2>/dev/null | awk -F': ' -v p="^${VETH_PREFIX}[0-9]+(@|$)" '$2 ~ p {sub(/@.*/, "", $2); print $2}'; }

do_down() {
  local ns v pidfile pid
  # sshds started from this DIR that somehow escaped their namespace (should not
  # happen, but a pid file is cheap to honour). Only kill if it really is sshd.
  if [[ -d $DIR/nodes ]]; then
    for pidfile in "$DIR"/nodes/*/sshd.pid; do
      [[ -f $pidfile ]] || continue
      pid=$(cat "$pidfile" 2>/dev/null || true)
      if [[ $pid =~ ^[0-9]+$ ]] && [[ $(cat "/proc/$pid/comm" 2>/dev/null || true) == sshd ]]; then
        kill -TERM "$pid" 2>/dev/null || true
      fi
      rm -f "$pidfile"
    done
  fi
  # Every lab namespace regardless of DIR: they are global, and a previous run may
  # have used another DIR. Namespaces are handled in parallel (each can take up to
  # a few seconds if something ignores SIGTERM).
  local -a jobs=()
  for ns in $(lab_namespaces); do
    kill_netns_procs "$ns" & jobs+=($!)
  done
  for pid in "${jobs[@]}"; do wait "$pid" || true; done
  # Delete host-side veths explicitly: that is synchronous, whereas `ip netns del`
  # frees the namespace's devices asynchronously and a quick `up` would then find
  # dsl-hI still present.
  {
    for v in $(lab_veths); do echo "link del $v"; done
    for ns in $(lab_namespaces); do echo "netns del $ns"; done
    if ip link show "$BRIDGE" &>/dev/null; then echo "link del $BRIDGE"; fi
  } | ip -force -batch - 2>/dev/null || true
  # known_hosts*: also the copies tests make beside it (known_hosts.wrong).
  rm -f "$DIR/lab.env" "$DIR/nodes.json" "$DIR"/known_hosts* "$DIR"/authorized_keys*
  rm -rf "$DIR/share"
}

write_sshd_config() {
  local i=$1 name=lab$1 addr nd
  addr=$(node_addr "$i")
  nd=$DIR/nodes/$name
  cat >"$nd/sshd_config" <<EOF
# Generated by scripts/testbed/lab.sh for node $name ($addr). Standalone: no Include of
# /etc/ssh so the host's sshd configuration cannot change the lab's behaviour.
ListenAddress $addr
Port 22
HostKey $nd/ssh_host_ed25519_key
PidFile $nd/sshd.pid
# Per user: only users with a file here can log in (the test users; root with --root-login).
AuthorizedKeysFile $DIR/authorized_keys.%u
PermitRootLogin $( ((ROOT_LOGIN)) && echo prohibit-password || echo no )
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
MaxSessions 100
MaxStartups 100:30:200
PrintMotd no
AcceptEnv LANG LC_*
Subsystem sftp /usr/lib/openssh/sftp-server
LogLevel INFO
EOF
}

# DIR/share: what lab workers run, readable by the test users whatever the repository's
# own permissions: test/fixtures/workers, scripts/demo, and the node_modules packages they
# import (with their dependencies), at the same relative paths as in the repository.
share_files() {
  local tmp=$DIR/share.tmp.$$
  rm -rf "$tmp" "$DIR/share"
  command -v node >/dev/null || die "node not found (needed to copy the lab's worker scripts)"
  node - "$REPO" "$tmp" <<'EOF' || die "copying the worker scripts into $DIR/share failed"
const { cpSync, existsSync, readFileSync, readdirSync } = require('node:fs');
const { join } = require('node:path');
const [repo, out] = process.argv.slice(2);
const dirs = ['test/fixtures/workers', 'scripts/demo'];
const wanted = new Set();
for (const d of dirs) {
  cpSync(join(repo, d), join(out, d), { recursive: true });
  for (const f of readdirSync(join(repo, d)).filter((x) => /\.[cm]?js$/.test(x))) {
    const text = readFileSync(join(repo, d, f), 'utf8');
    for (const m of text.matchAll(/(?:from|import)\s*\(?\s*['"]([^'"./][^'"]*)['"]/g)) {
      if (m[1].startsWith('node:')) continue;
      const parts = m[1].split('/');
      wanted.add(m[1].startsWith('@') ? parts.slice(0, 2).join('/') : parts[0]);
    }
  }
}
// Each package and its dependencies, hoisted at the top of node_modules (npm's layout); a package's
// own nested node_modules travels with it.
const copied = new Set();
const visit = (name) => {
  if (copied.has(name)) return;
  const dir = join(repo, 'node_modules', name);
  if (!existsSync(join(dir, 'package.json'))) return; // nested under its dependent, copied with it
  copied.add(name);
  cpSync(dir, join(out, 'node_modules', name), { recursive: true, dereference: true });
  const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'));
  for (const dep of Object.keys({ ...pkg.dependencies, ...pkg.optionalDependencies })) visit(dep);
};
// A name that is no package here (a builtin without node:, or a match inside a string) is skipped.
for (const name of wanted) visit(name);
EOF
  chmod -R a+rX "$tmp"
  mv "$tmp" "$DIR/share"
}

# Per-node work that can run in parallel: host key, sshd config, addresses inside
# the namespace, and starting sshd. The namespace and veth already exist.
setup_node() {
  local i=$1 name=lab$1 ns=${NS_PREFIX}$1 addr nd
  addr=$(node_addr "$i")
  nd=$DIR/nodes/$name
  mkdir -p "$nd"
  # Keep an existing host key so known_hosts entries stay stable across `up`s.
  if [[ ! -s $nd/ssh_host_ed25519_key ]]; then
    rm -f "$nd/ssh_host_ed25519_key" "$nd/ssh_host_ed25519_key.pub"
    ssh-keygen -q -t ed25519 -N '' -C "$name" -f "$nd/ssh_host_ed25519_key"
  fi
  write_sshd_config "$i"
  ip -n "$ns" -batch - <<EOF
link set lo up
addr add $addr/24 dev eth0
link set eth0 up
EOF
  rm -f "$nd/sshd.pid"
  # A private UTS namespace lets `hostname` in a session report the node's name,
  # as it would on a real node. sshd daemonises and writes its pid file itself.
  # shellcheck disable=SC2016  # $1.. expand in the inner sh, on purpose
  ip netns exec "$ns" unshare --uts sh -c 'hostname "$1" && exec "$2" -f "$3" -E "$4"' \
    sh "$name" "$SSHD" "$nd/sshd_config" "$nd/sshd.log" </dev/null 9>&-   # 9: our lock fd, must not outlive us
}

# Poll until a real, strictly host-key-checked ssh login to the node works.
wait_ssh() {
  local i=$1 addr deadline
  addr=$(node_addr "$i")
  deadline=$((SECONDS + UP_TIMEOUT_S))
  while :; do
    if ssh -F /dev/null -i "$DIR/id_ed25519" -o IdentitiesOnly=yes -o BatchMode=yes \
         -o UserKnownHostsFile="$DIR/known_hosts" -o GlobalKnownHostsFile=/dev/null \
         -o StrictHostKeyChecking=yes -o ConnectTimeout=2 -o LogLevel=ERROR \
         "$LAB_USER@$addr" true </dev/null 2>/dev/null; then
      return 0
    fi
    if (( SECONDS >= deadline )); then
      log "lab$i ($addr): ssh not ready after ${UP_TIMEOUT_S}s; sshd log:"
      tail -n 20 "$DIR/nodes/lab$i/sshd.log" >&2 2>/dev/null || true
      return 1
    fi
    sleep 0.1
  done
}

# Runs "$@ I" for I in 1..n in parallel, fails if any failed.
parallel_nodes() {
  local n=$1 i pid rc=0; shift
  local -a jobs=()
  for ((i = 1; i <= n; i++)); do
    "$@" "$i" & jobs+=($!)
  done
  for pid in "${jobs[@]}"; do wait "$pid" || rc=1; done
  return $rc
}

do_up() {
  local n=$1 i t0=$SECONDS
  if ! [[ $n =~ ^[0-9]+$ ]] || (( n < 1 || n > MAX_NODES )); then die "N must be 1..$MAX_NODES (got '$n')"; fi
  command -v ssh-keygen >/dev/null || die "ssh-keygen not found (apt-get install openssh-client)"
  [[ -x $SSHD ]] || die "$SSHD not found (apt-get install openssh-server)"

  do_down   # idempotence: whatever was there (half-built or complete) goes first
  mkdir -p "$DIR/nodes" /run/sshd   # /run/sshd: sshd's privilege-separation dir
  chmod 0755 /run/sshd
  # The test users read their authorized_keys file in DIR (sshd reads it with the user's rights)
  # and run what is in DIR/share: DIR must be traversable. Secrets in it stay 0600.
  chmod 0755 "$DIR"

  if [[ ! -s $DIR/id_ed25519 ]]; then
    rm -f "$DIR/id_ed25519" "$DIR/id_ed25519.pub"
    ssh-keygen -q -t ed25519 -N '' -C dynsup-lab -f "$DIR/id_ed25519"
  fi
  chmod 600 "$DIR/id_ed25519"
  local user_line users=()
  user_line=$(bash "$REPO/scripts/testbed/test-user.sh" ensure clean) || die "cannot create the test user"
  LAB_USER=${user_line%% *}
  users+=("$LAB_USER")
  if ((RC_USER)); then
    user_line=$(bash "$REPO/scripts/testbed/test-user.sh" ensure rc) || die "cannot create the rc test user"
    users+=("${user_line%% *}")
  fi
  for u in "${users[@]}"; do install -m 0644 "$DIR/id_ed25519.pub" "$DIR/authorized_keys.$u"; done
  if ((ROOT_LOGIN)); then install -m 0600 "$DIR/id_ed25519.pub" "$DIR/authorized_keys.root"; fi
  share_files

  # Global topology in one ip batch (one process instead of ~4N).
  {
    echo "link add $BRIDGE type bridge"
    echo "addr add $HEAD_ADDR/24 dev $BRIDGE"
    echo "link set $BRIDGE up"
    for ((i = 1; i <= n; i++)); do
      echo "netns add ${NS_PREFIX}$i"
      echo "link add ${VETH_PREFIX}$i type veth peer name eth0 netns ${NS_PREFIX}$i"
      echo "link set ${VETH_PREFIX}$i master $BRIDGE up"
    done
  } | ip -batch - || die "creating bridge/namespaces/veths failed"

  parallel_nodes "$n" setup_node || die "node setup failed (see $DIR/nodes/*/sshd.log)"

  # known_hosts from the host keys we just installed: strict checking then proves
  # the client talks to the node's own sshd and not something else on the address.
  : >"$DIR/known_hosts.tmp"
  for ((i = 1; i <= n; i++)); do
    printf '%s %s\n' "$(node_addr "$i")" \
      "$(cut -d' ' -f1,2 "$DIR/nodes/lab$i/ssh_host_ed25519_key.pub")" >>"$DIR/known_hosts.tmp"
  done
  mv "$DIR/known_hosts.tmp" "$DIR/known_hosts"

  parallel_nodes "$n" wait_ssh || die "not every node's sshd came up"

  write_outputs "$n"
  log "up: $n nodes in $((SECONDS - t0))s (dir $DIR)"
}

write_outputs() {
  local n=$1 i nodes="" sep=""
  for ((i = 1; i <= n; i++)); do nodes+="${nodes:+ }lab$i"; done
  {
    echo "# Generated by scripts/testbed/lab.sh; source it (set -a) or parse KEY=\"VALUE\" lines."
    echo "LAB_DIR=\"$DIR\""
    echo "LAB_NODES=\"$nodes\""
    echo "LAB_HEAD=\"$HEAD_ADDR\""
    echo "LAB_BRIDGE=\"$BRIDGE\""
    echo "LAB_KEY=\"$DIR/id_ed25519\""
    echo "LAB_KNOWN_HOSTS=\"$DIR/known_hosts\""
    echo "LAB_USER=\"$LAB_USER\""
    if ((RC_USER)); then echo "LAB_RC_USER=\"dynsup-rc\""; fi
    if ((ROOT_LOGIN)); then echo "LAB_ROOT_LOGIN=\"1\""; fi
    echo "LAB_SHARE=\"$DIR/share\""
    for ((i = 1; i <= n; i++)); do
      echo "LAB_ADDR_lab$i=\"$(node_addr "$i")\""
      echo "LAB_NETNS_lab$i=\"${NS_PREFIX}$i\""
    done
  } >"$DIR/lab.env.tmp"
  {
    printf '['
    for ((i = 1; i <= n; i++)); do
      printf '%s\n  {"name": "lab%d", "address": "%s", "netns": "%s%d", "veth": "%s%d", "user": "%s"}' \
        "$sep" "$i" "$(node_addr "$i")" "$NS_PREFIX" "$i" "$VETH_PREFIX" "$i" "$LAB_USER"
      sep=,
    done
    printf '\n]\n'
  } >"$DIR/nodes.json.tmp"
  # lab.env appears last: its presence means "the lab is fully up".
  mv "$DIR/nodes.json.tmp" "$DIR/nodes.json"
  mv "$DIR/lab.env.tmp" "$DIR/lab.env"
}

do_status() {
  local ns i pid state sshd_state rc=0
  local -a nss
  mapfile -t nss < <(lab_namespaces | sort -V)
  if ((${#nss[@]} == 0)); then
    echo "lab: down (no ${NS_PREFIX}* namespaces)"
    [[ -f $DIR/lab.env ]] && echo "note: stale $DIR/lab.env present"
    return 3
  fi
  echo "lab: ${#nss[@]} namespaces, bridge $BRIDGE $(ip -br addr show "$BRIDGE" 2>/dev/null | awk '{print $2, $3}')"
  [[ -f $DIR/lab.env ]] || { echo "note: $DIR/lab.env missing (built with another --dir, or incomplete)"; rc=1; }
  for ns in "${nss[@]}"; do
    i=${ns#"$NS_PREFIX"}
    state=$(ip -br link show "${VETH_PREFIX}$i" 2>/dev/null | awk '{print $2}')
    pid=$(cat "$DIR/nodes/lab$i/sshd.pid" 2>/dev/null || true)
    if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then sshd_state="sshd pid $pid"; else sshd_state="sshd DOWN"; rc=1; fi
    printf '  lab%-4s %-12s link %-5s %s, %s procs\n' "$i" "$(node_addr "$i")" "${state:-MISSING}" \
      "$sshd_state" "$(ip netns pids "$ns" 2>/dev/null | wc -l)"
  done
  return $rc
}

do_link() {
  local node=$1 updown=$2 i
  [[ $node =~ ^lab([0-9]+)$ ]] || die "node must be labN (got '$node')"
  i=${BASH_REMATCH[1]}
  [[ $updown == up || $updown == down ]] || die "link state must be up or down"
  ip link show "${VETH_PREFIX}$i" &>/dev/null || die "$node is not part of the lab"
  ip link set "${VETH_PREFIX}$i" "$updown"
}

main() {
  (($# >= 1)) || usage
  local cmd=$1; shift
  local -a pos=()
  while (($#)); do
    case $1 in
      --dir) (($# >= 2)) || usage; DIR=$2; shift 2 ;;
      --dir=*) DIR=${1#--dir=}; shift ;;
      --rc-user) RC_USER=1; shift ;;
      --root-login) ROOT_LOGIN=1; shift ;;
      -h|--help) usage ;;
      *) pos+=("$1"); shift ;;
    esac
  done
  [[ $DIR == /* ]] || DIR=$PWD/$DIR
  DIR=${DIR%/}
  [[ $(id -u) == 0 ]] || die "must run as root (namespaces, bridge, sshd)"

  exec 9>"$LOCK_FILE"
  flock -w 120 9 || die "another lab.sh is holding $LOCK_FILE"

  case $cmd in
    up) ((${#pos[@]} == 1)) || usage; do_up "${pos[0]}" ;;
    down) ((${#pos[@]} == 0)) || usage; do_down; log "down" ;;
    status) do_status ;;
    link) ((${#pos[@]} == 2)) || usage; do_link "${pos[0]}" "${pos[1]}" ;;
    *) usage ;;
  esac
}

main "$@"
