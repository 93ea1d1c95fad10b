#!/usr/bin/env bash
# Runs the whole test suite from a fresh clone: installs the pinned toolchain, checks formatting,
# lint and types, runs the Zig unit tests, builds the native libraries, fetches the default model
# (its tests skip with a message when it cannot be fetched), then runs every Deno test.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/bootstrap.sh"
cd "$SPARROW_ROOT"
export SPARROW_CACHE_DIR="${SPARROW_CACHE_DIR:-$SPARROW_ROOT/.cache}"
deno="$SPARROW_DENO"
zig="$SPARROW_ZIG"

step() { printf '\n== %s\n' "$*" >&2; }

step "format, lint, types"
"$deno" fmt --check
"$deno" lint
"$deno" check mod.ts cli.ts
(cd zig && "$zig" fmt --check src build.zig)

step "zig build test"
(cd zig && "$zig" build test --summary all)

step "zig build test for aarch64 under qemu (the NEON path of the kernels)"
# Static musl binaries, so qemu-user needs no aarch64 glibc.
if command -v qemu-aarch64 >/dev/null; then
  (cd zig && "$zig" build test -Dtarget=aarch64-linux-musl -fqemu --summary all)
else
  echo "skipped: qemu-aarch64 is not installed (Debian: apt-get install qemu-user); .ci/run installs it" >&2
fi

step "zig build (ReleaseFast)"
(cd zig && "$zig" build -Doptimize=ReleaseFast)

step "default model"
"$deno" run --allow-read --allow-write --allow-env --allow-run cli.ts fetch-model --quiet ||
  echo "warning: could not fetch the default model; the tests that need it will skip" >&2

step "deno test"
"$deno" test --allow-read --allow-write --allow-env --allow-ffi --allow-run "$@"
