#!/usr/bin/env bash
# Installs llama.cpp for the comparison benchmarks: the npm package node-llama-cpp 3.22.1, which
# ships prebuilt llama.cpp binaries, into .tools/llamacpp (git-ignored). Needs Node.js and npm.
# Benchmarks only; sparrow itself does not use it.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
prefix="$root/.tools/llamacpp"
version=3.22.1
if [ -f "$prefix/node_modules/node-llama-cpp/package.json" ] &&
  grep -q "\"version\": \"$version\"" "$prefix/node_modules/node-llama-cpp/package.json"; then
  exit 0
fi
command -v npm >/dev/null || { echo "install_llamacpp: npm is needed" >&2; exit 1; }
echo "install_llamacpp: installing node-llama-cpp $version into $prefix" >&2
mkdir -p "$prefix"
# --ignore-scripts: the postinstall would try to download or build llama.cpp; the prebuilt binaries
# come as optional dependencies and are all we use.
npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error --ignore-scripts "node-llama-cpp@$version" >&2
