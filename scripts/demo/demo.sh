#!/usr/bin/env bash
# Bring up the demo cluster (clusters/local.yaml) on this machine, in the foreground (Ctrl-C stops it).
# On a fresh Debian machine as root it first installs what is missing: nats-server and etcd-server from
# Debian's packages (it says so before doing it), the npm dependencies, and the build.
set -euo pipefail
cd "$(dirname "$0")/../.."

missing=()
command -v nats-server >/dev/null || [[ -x /usr/sbin/nats-server ]] || missing+=(nats-server)
command -v etcd >/dev/null || missing+=(etcd-server)
if ((${#missing[@]})); then
  echo "dynsup demo: installing ${missing[*]} from Debian's packages (apt-get)..." >&2
  [[ $(id -u) == 0 ]] || { echo "dynsup demo: run as root, or install ${missing[*]} yourself" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi
export PATH="$PATH:/usr/sbin"
[[ -d node_modules ]] || { echo "dynsup demo: npm ci" >&2; npm ci --no-audit --no-fund >&2; }
[[ -f dist/cli-bundle/main.cjs && -z "$(find src -newer dist/cli-bundle/main.cjs -name '*.ts' -print -quit)" ]] || { echo "dynsup demo: building" >&2; npm run build >&2; }
echo "dynsup demo: in another terminal try:" >&2
echo "  curl -s localhost:8000/v1/completions -H 'content-type: application/json' -d '{\"model\":\"demo\",\"prompt\":\"hello world\",\"max_tokens\":8}'" >&2
exec node bin/dynsup.js up clusters/local.yaml "$@"
