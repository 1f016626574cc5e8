#!/usr/bin/env bash
# Creates the project-local virtual environment (.venv) from uv.lock. uv itself is pinned and kept in the cache.
set -euo pipefail
source "$(dirname "$0")/env.sh"
UV_VERSION=0.13.8
uv="$K2_CACHE/uv-$UV_VERSION/bin/uv"
if [ ! -x "$uv" ]; then
  python3 -m venv "$K2_CACHE/uv-$UV_VERSION"
  "$K2_CACHE/uv-$UV_VERSION/bin/pip" install --quiet "uv==$UV_VERSION"
fi
cd "$K2_ROOT"
"$uv" sync --locked --quiet
