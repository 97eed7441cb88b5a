#!/usr/bin/env bash
# `npm test`'s pretest: what the suite needs, so that `npm test` in a fresh clone on a fresh Debian 12 is
# the one command (README Quick start). As root: .ci/install.sh, which installs the missing system
# packages and says which (nothing, not even apt-get update, when all are there). Not as root: only
# checks, and stops with the list of what is missing (the integration tests need root anyway).
# Then npm ci when node_modules is missing, and the build.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) == 0 ]]; then
  bash .ci/install.sh
else
  bash .ci/install.sh --check || { echo "npm test: install the packages above as root (sudo bash .ci/install.sh), or run npm test as root" >&2; exit 1; }
fi
[[ -d node_modules ]] || { echo "npm test: no node_modules: npm ci" >&2; npm ci --no-audit --no-fund; }
npm run build
