#!/usr/bin/env bash
# Creates the project-local virtual environment (.venv) exactly as pinned in requirements/dev.txt (versions and
# hashes), then installs the project itself editable, which builds its compiled hot paths (native/, Rust via
# maturin: cargo fetches the crates pinned in native/Cargo.toml) into k2/_native, with the pinned uv
# (scripts/tools.sh uv).
set -euo pipefail
source "$(dirname "$0")/env.sh"
uv=$("$K2_ROOT/scripts/tools.sh" uv)
cd "$K2_ROOT"
export UV_PYTHON_DOWNLOADS=never
[ -x .venv/bin/python ] || "$uv" venv --quiet --python python3 .venv
"$uv" pip sync --quiet --python .venv/bin/python requirements/dev.txt
"$uv" pip install --quiet --python .venv/bin/python --no-deps --reinstall-package k2 --editable .
