#!/usr/bin/env bash
# Installs the pinned toolchain into .tools/ (git-ignored) when it is missing, then prints nothing
# but errors. Sourced or executed by ./sparrow, scripts/test.sh and .ci/run.
#
#   Deno  2.5.6   from the npm package `deno` (the platform package carries the binary)
#   Zig   0.14.1  from the PyPI package `ziglang`
#
# Only the npm registry and PyPI are needed: both are reachable from the build machines, GitHub
# and JSR are not.
#
# When sourced (scripts/env.sh, ./sparrow), it must not change the caller's shell options, so the
# strict mode is set only for the installing steps, which run in a subshell.

SPARROW_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DENO_VERSION=2.5.6
ZIG_VERSION=0.14.1
TOOLS="$SPARROW_ROOT/.tools"

case "$(uname -m)" in
  x86_64) deno_pkg=linux-x64-glibc ;;
  aarch64 | arm64) deno_pkg=linux-arm64-glibc ;;
  *) echo "bootstrap: unsupported machine $(uname -m)" >&2; return 1 2>/dev/null || exit 1 ;;
esac

sparrow_install_tools() (
set -euo pipefail
DENO_DIR_PINNED="$TOOLS/deno-$DENO_VERSION"
SPARROW_DENO="$DENO_DIR_PINNED/node_modules/@deno/$deno_pkg/deno"
if [ ! -x "$SPARROW_DENO" ]; then
  command -v npm >/dev/null || { echo "bootstrap: npm is needed to install Deno $DENO_VERSION" >&2; exit 1; }
  echo "bootstrap: installing Deno $DENO_VERSION (npm package deno) into $DENO_DIR_PINNED" >&2
  mkdir -p "$DENO_DIR_PINNED"
  npm install --prefix "$DENO_DIR_PINNED" --no-audit --no-fund --loglevel=error \
    "deno@$DENO_VERSION" "@deno/$deno_pkg@$DENO_VERSION" >&2
  [ -x "$SPARROW_DENO" ] || { echo "bootstrap: Deno binary missing at $SPARROW_DENO after install" >&2; exit 1; }
fi

ZIG_DIR_PINNED="$TOOLS/zig-$ZIG_VERSION"
SPARROW_ZIG="$ZIG_DIR_PINNED/ziglang/zig"
if [ ! -x "$SPARROW_ZIG" ]; then
  command -v python3 >/dev/null || { echo "bootstrap: python3 is needed to install Zig $ZIG_VERSION" >&2; exit 1; }
  echo "bootstrap: installing Zig $ZIG_VERSION (PyPI package ziglang) into $ZIG_DIR_PINNED" >&2
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps \
    --target "$ZIG_DIR_PINNED" "ziglang==$ZIG_VERSION" >&2
  [ -x "$SPARROW_ZIG" ] || { echo "bootstrap: Zig binary missing at $SPARROW_ZIG after install" >&2; exit 1; }
fi

)
sparrow_install_tools || { echo "bootstrap: installing the toolchain failed" >&2; return 1 2>/dev/null || exit 1; }
SPARROW_DENO="$TOOLS/deno-$DENO_VERSION/node_modules/@deno/$deno_pkg/deno"
SPARROW_ZIG="$TOOLS/zig-$ZIG_VERSION/ziglang/zig"
unset -f sparrow_install_tools

# Deno trusts the system certificate store too: build machines reach npm through a TLS proxy whose
# CA is installed system-wide. Deno's cache (npm type packages for node: imports) stays in the repo.
export DENO_TLS_CA_STORE=mozilla,system
export DENO_DIR="$SPARROW_ROOT/.tools/deno-dir"

# Zig caches stay inside the repository (git-ignored), never in $HOME.
export ZIG_GLOBAL_CACHE_DIR="$SPARROW_ROOT/.tools/zig-cache/global"
export ZIG_LOCAL_CACHE_DIR="$SPARROW_ROOT/.tools/zig-cache/local"
export SPARROW_DENO SPARROW_ZIG SPARROW_ROOT
# native_lib.ts finds Zig through this variable when it must build the core from source.
export SPARROW_ZIG_EXE="$SPARROW_ZIG"
