#!/usr/bin/env bash
# test-user.sh — the users the test harnesses' sshd daemons log in as (test/helpers/sshd.ts,
# scripts/testbed/lab.sh), so that no test runs on this machine's root login with its dotfiles.
#
#   scripts/testbed/test-user.sh ensure clean   user dynsup-t:  shell /bin/sh, an empty home, no rc files
#   scripts/testbed/test-user.sh ensure rc      user dynsup-rc: shell /bin/bash, whose ~/.bashrc and ~/.profile
#                                       are slow and noisy (sleep 1; a line on stdout and one on stderr),
#                                       like the conda/module/pyenv init of users on GPU clusters
#
# Prints `NAME UID GID HOME` on stdout. Idempotent, and serialised with a lock so concurrent
# harnesses cannot race on useradd. Each call also puts the user's state back into shape:
#   - home /home/NAME exists, owned by the user, mode 0755 (nothing in it is needed to log in: the
#     harnesses keep authorized keys in their own AuthorizedKeysFile);
#   - the whole home emptied when no process of the user runs (leftovers of an earlier run, such as
#     an agent cached in ~/.cache, cannot leak into this one); in any case no rc file but:
#   - for `rc`: exactly the rc files above (owned by root);
#   - /tmp/dynsup-NAME (the default node runtime dir of a cluster that logs in as NAME) is a real
#     directory owned by the user, mode 0700, emptied like the home.
# The password field is '*': no password login, but not locked ('!' makes sshd refuse even keys
# when it runs without PAM).
set -euo pipefail

readonly LOCK_FILE=/run/dynsup-test-user.lock
readonly CLEAN_USER=dynsup-t
readonly RC_USER=dynsup-rc
readonly RC_LINE='sleep 1; echo rc-noise; echo rc-noise >&2'
# Every file a shell (sh/dash, bash, zsh, csh) or sshd reads from a home at login.
readonly RC_FILES=(.profile .bashrc .bash_profile .bash_login .bash_logout .shrc .kshrc .zshenv .zprofile
                   .zshrc .zlogin .login .cshrc .tcshrc .ssh/rc .ssh/environment .hushlogin)

die() { printf '[test-user] error: %s\n' "$*" >&2; exit 1; }

# Writes $2 to file $1 owned by root, mode 0644, atomically (a concurrent login sees old or new).
put_file() {
  local file=$1 content=$2
  printf '%s\n' "$content" >"$file.tmp.$$"
  chmod 0644 "$file.tmp.$$"
  mv -f "$file.tmp.$$" "$file"
}

ensure() {
  local kind=$1 name shell home uid gid f
  case $kind in
    clean) name=$CLEAN_USER shell=/bin/sh ;;
    rc) name=$RC_USER shell=/bin/bash ;;
    *) die "kind must be clean or rc (got '$kind')" ;;
  esac
  home=/home/$name
  [[ -x $shell ]] || die "$shell missing"

  if ! id -u "$name" >/dev/null 2>&1; then
    # --no-create-home: useradd -m would copy /etc/skel (.bashrc, .profile) into it.
    useradd --system --user-group --no-create-home --home-dir "$home" --shell "$shell" -p '*' \
      --comment 'dynsup test login' "$name" >&2
    echo "[test-user] created user $name (shell $shell, home $home)" >&2
  else
    # An older harness (or a person) may have changed it: put back what the tests rely on.
    [[ $(getent passwd "$name" | cut -d: -f6,7) == "$home:$shell" ]] || usermod --home "$home" --shell "$shell" "$name"
    [[ $(getent shadow "$name" | cut -d: -f2) == '*' ]] || usermod -p '*' "$name"
  fi
  uid=$(id -u "$name")
  gid=$(id -g "$name")

  # Home: a real directory of the user's. Emptied when nothing of the user's runs (a test of another
  # harness may be using it right now otherwise: then only the rc files go).
  if [[ -L $home || ( -e $home && ! -d $home ) ]]; then rm -f "$home"; fi
  mkdir -p "$home"
  local idle=0
  # Zombies do not count: a lab's sshd sessions linger as <defunct> until a slow init reaps them.
  if ! ps -u "$uid" -o stat= 2>/dev/null | grep -qv '^Z'; then idle=1; fi
  if ((idle)); then find "$home" -mindepth 1 -delete; fi
  for f in "${RC_FILES[@]}"; do rm -f "${home:?}/$f"; done
  chown "$uid:$gid" "$home"
  chmod 0755 "$home"
  if [[ $kind == rc ]]; then
    put_file "$home/.bashrc" "# written by scripts/testbed/test-user.sh: a slow and noisy rc file, on purpose"$'\n'"$RC_LINE"
    put_file "$home/.profile" "# written by scripts/testbed/test-user.sh: a slow and noisy rc file, on purpose"$'\n'"$RC_LINE"
  fi

  # The default runtime dir of a cluster whose nodes log in as this user.
  local run=/tmp/dynsup-$name
  if [[ -L $run || ( -e $run && ! -d $run ) ]]; then rm -f "$run"; fi
  mkdir -p "$run"
  if ((idle)); then find "$run" -mindepth 1 -delete; fi
  [[ $(stat -c %u "$run") == "$uid" ]] || chown -R "$uid:$gid" "$run"
  chmod 0700 "$run"

  printf '%s %s %s %s\n' "$name" "$uid" "$gid" "$home"
}

main() {
  [[ $# == 2 && $1 == ensure ]] || { echo "usage: $0 ensure clean|rc" >&2; exit 2; }
  [[ $(id -u) == 0 ]] || die "must run as root (useradd)"
  exec 8>"$LOCK_FILE"
  flock -w 60 8 || die "another test-user.sh is holding $LOCK_FILE"
  ensure "$2"
}

main "$@"
