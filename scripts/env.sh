# Sourced by the project's scripts: where K2 keeps caches (outside the repo) and run state (logs, data).
K2_ROOT="${K2_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
K2_CACHE="${K2_CACHE:-$HOME/.cache/k2}"
K2_RUN_DIR="${K2_RUN_DIR:-$K2_ROOT/.run}"
K2_BIN="$K2_CACHE/bin"
export K2_ROOT K2_CACHE K2_RUN_DIR K2_BIN
mkdir -p "$K2_CACHE" "$K2_BIN" "$K2_RUN_DIR/logs"
