#!/usr/bin/env bash
# Prove dynsup on real GPUs: pinning, restarts and release of GPU memory (clusters/gpu-local.yaml).
#
#   scripts/gpu/gpu-check.sh pack     on a dev machine (with node, nats-server, etcd, npm, xz): fills .device/
#                                 (git-ignored) with what a bare GPU machine lacks: node, nats-server and
#                                 etcd (xz), and dist/ (tsc, plus the node agent's esbuild bundle
#                                 dist/agent/dynsup-agent.mjs) + production node_modules (runtime.tar.xz).
#                                 ~35 MB. Built from the working tree's src/, or with GPU_CHECK_REF=REV
#                                 (e.g. HEAD) from that commit's; .device/BUILD says which.
#   scripts/gpu/gpu-check.sh [run]    on the GPU machine, from the repository root: unpacks what is missing
#                                 (node/nats-server/etcd to a temp bin dir put first on PATH; dist/ and
#                                 node_modules/ into the checkout, only if absent), then runs
#                                 scripts/gpu/gpu_check.py: `dynsup up -d`, nvidia-smi checks, kill -9 of a
#                                 replica's leader (whose child and setsid grandchild hold GPU memory too),
#                                 `down`, `up` + kill -9 of the supervisor. Exit 0 = every check passed.
#                                 GPU telemetry (issue 14): status --json, status and /metrics must show each
#                                 GPU replica's memory as nvidia-smi does, with no process of another on its
#                                 GPUs, and a stray CUDA process started on a replica's GPU must be listed
#                                 under its `others` (checks "telemetry", "telemetry: a stray process ...").
#                                 GPU release gate (issue 13): after kill -9 of a replica whose child holds GPU memory, the
#                                 new run must start only once nvidia-smi lists none of the old processes
#                                 (check "GPU release before the restart").
#                                 Options are gpu_check.py's environment variables (its docstring), e.g.
#                                 GPU_CHECK_GPUS=1 on a one-GPU machine (decode then runs on the CPU).
#
# Through the session's `run` tool (device machine, 2+ GPUs; on nvidia-h200 it runs the 1-GPU layout by itself):
#   run(kind=nvidia-h200-x2, carry=[".device"], command="scripts/gpu/gpu-check.sh 2>&1 | tee $OUT/gpu-check-run.log")
#
# GPU_CHECK_FAKE=1 runs everything without a GPU (workers on the CPU, nvidia-smi replaced by the workers'
# CUDA_VISIBLE_DEVICES and RSS): `GPU_CHECK_FAKE=1 scripts/gpu/gpu-check.sh`. Results also go to $OUT if set.
set -euo pipefail
cd "$(dirname "$0")/../.."
DEV=.device

unxz_to() { # unxz_to FILE.xz: decompress to stdout, with xz or (no xz-utils) Python's lzma
  if command -v xz >/dev/null; then xz -dc "$1"; else python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)' "$1"; fi
}

pack() {
  command -v xz >/dev/null || { echo "pack: needs xz" >&2; exit 1; }
  mkdir -p "$DEV"
  local node nats etcd
  node=$(command -v node); nats=$(command -v nats-server || echo /usr/sbin/nats-server); etcd=$(command -v etcd)
  if [[ ! -s $DEV/node.xz || $node -nt $DEV/node.xz ]]; then
    echo "pack: $node ($("$node" --version)), stripped, xz -9 (takes ~1 min)" >&2
    strip -o "$DEV/node.tmp" "$node" 2>/dev/null || cp "$node" "$DEV/node.tmp"
    xz -T0 -9 -c "$DEV/node.tmp" >"$DEV/node.xz"; rm -f "$DEV/node.tmp"
  fi
  [[ -s $DEV/nats-server.xz && ! $nats -nt $DEV/nats-server.xz ]] || xz -T0 -9 -c "$nats" >"$DEV/nats-server.xz"
  [[ -s $DEV/etcd.xz && ! $etcd -nt $DEV/etcd.xz ]] || xz -T0 -9 -c "$etcd" >"$DEV/etcd.xz"
  # dist/ built from the current src (into a temp dir: the checkout's own dist/ is left alone) the way
  # `npm run build` builds it: tsc, then the resident node agent bundled by esbuild into
  # dist/agent/dynsup-agent.mjs (the head copies that one file to nodes; without it nothing starts).
  # With GPU_CHECK_REF, src/ comes from that commit (git archive), not from the working tree.
  # Then the production dependencies only (a pruned copy of node_modules; no registry access needed).
  local tmp src=. build; tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  if [[ -n ${GPU_CHECK_REF:-} ]]; then
    src=$tmp/src-tree; mkdir -p "$src"
    git archive "$GPU_CHECK_REF" package.json src tsconfig.json | tar -x -C "$src"
    ln -s "$PWD/node_modules" "$src/node_modules"
    build="commit $(git rev-parse --short=12 "$GPU_CHECK_REF") (GPU_CHECK_REF=$GPU_CHECK_REF)"
  else
    build="working tree at commit $(git rev-parse --short=12 HEAD 2>/dev/null || echo '?')"
    local dirty; dirty=$(git status --porcelain -- src tsconfig.json package.json 2>/dev/null | awk '{print $2}' | tr '\n' ' ')
    [[ -z $dirty ]] || build+=", with uncommitted changes in: ${dirty% }"
  fi
  cp package.json package-lock.json "$tmp/"
  cp -a node_modules "$tmp/"
  (cd "$tmp" && npm prune --omit=dev --no-audit --no-fund >/dev/null 2>&1)
  # bin/dynsup.js runs the bundled CLI (dist/cli-bundle), the supervisor serves the page in dist/ui/static.
  (cd "$src" && npx tsc -p tsconfig.json --outDir "$tmp/dist" && node "$OLDPWD/scripts/build/agent.mjs" "$tmp/dist/agent/dynsup-agent.mjs" \
    && node "$OLDPWD/scripts/build/ui.mjs" "$tmp/dist/ui/static" && node "$OLDPWD/scripts/build/cli.mjs" "$tmp/dist/cli-bundle")
  [[ -s $tmp/dist/agent/dynsup-agent.mjs && -s $tmp/dist/cli-bundle/main.cjs ]] || { echo "pack: the build left no dist/cli-bundle/main.cjs or dist/agent/dynsup-agent.mjs" >&2; exit 1; }
  echo "dist/ built $(date -u +%Y-%m-%dT%H:%M:%SZ) from the $build; agent bundle sha256 $(sha256sum "$tmp/dist/agent/dynsup-agent.mjs" | cut -c1-16)" >"$tmp/dist/BUILD"
  cp "$tmp/dist/BUILD" "$DEV/BUILD"
  tar -C "$tmp" -cf - dist node_modules | xz -T0 -9 >"$DEV/runtime.tar.xz"
  ls -l "$DEV"/*.xz >&2
  du -ch "$DEV"/*.xz | tail -1 >&2
  echo "pack: $(cat "$DEV/BUILD")" >&2
}

setup() {
  local bin="${TMPDIR:-/tmp}/dynsup-gpu-check/bin" b
  mkdir -p "$bin"
  for b in node nats-server etcd; do
    if ! command -v "$b" >/dev/null && [[ ! -x /usr/sbin/$b ]]; then
      [[ -s $DEV/$b.xz ]] || { echo "gpu-check: no $b here and no $DEV/$b.xz (run 'scripts/gpu/gpu-check.sh pack' where it is, carry .device)" >&2; exit 1; }
      [[ -x $bin/$b ]] || { unxz_to "$DEV/$b.xz" >"$bin/$b.tmp" && chmod +x "$bin/$b.tmp" && mv "$bin/$b.tmp" "$bin/$b"; }
    fi
  done
  export PATH="$bin:$PATH:/usr/sbin"
  # dist/ and node_modules/ are git-ignored, so they do not travel with the checkout: unpack the packed
  # ones, but never over a checkout's own.
  local want=()
  [[ -f dist/cli/main.js ]] || want+=(dist)
  [[ -d node_modules/yaml ]] || want+=(node_modules)
  if ((${#want[@]})); then
    [[ -s $DEV/runtime.tar.xz ]] || { echo "gpu-check: ${want[*]} missing and no $DEV/runtime.tar.xz" >&2; exit 1; }
    echo "gpu-check: unpacking ${want[*]} from $DEV/runtime.tar.xz" >&2
    unxz_to "$DEV/runtime.tar.xz" | tar -xf - "${want[@]}"
  fi
  # The head starts the node agent as `node dist/agent/dynsup-agent.mjs`: a dist/ without it cannot run.
  [[ -s dist/agent/dynsup-agent.mjs && -s dist/cli-bundle/main.cjs ]] || { echo "gpu-check: dist/agent/dynsup-agent.mjs or dist/cli-bundle/main.cjs missing: this dist/ was not built by 'npm run build' (or pack)" >&2; exit 1; }
  [[ -f dist/BUILD ]] && echo "gpu-check: $(cat dist/BUILD)" >&2
  echo "gpu-check: node $(node --version), $(nats-server --version), $(etcd --version | head -1), $(python3 --version)" >&2
  if [[ ${GPU_CHECK_FAKE:-} != 1 ]]; then
    nvidia-smi -L >&2
    python3 -c 'import torch; print("gpu-check: torch", torch.__version__, "sees", torch.cuda.device_count(), "GPU(s)")' >&2
  fi
}

case "${1:-run}" in
  pack) pack ;;
  run) setup; shift $(($# > 0 ? 1 : 0)); exec python3 scripts/gpu/gpu_check.py "$@" ;;
  -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;p}' "$0" ;;
  *) echo "usage: scripts/gpu/gpu-check.sh [pack|run]" >&2; exit 2 ;;
esac
