# Source this to get the pinned toolchain on PATH in an interactive shell:  . scripts/env.sh
# (installs it first when missing).
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/bootstrap.sh"
PATH="$(dirname "$SPARROW_DENO"):$(dirname "$SPARROW_ZIG"):$PATH"
export PATH
