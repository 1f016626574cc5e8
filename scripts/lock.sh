#!/usr/bin/env bash
# Pins the dependencies of pyproject.toml: requirements/runtime.txt (the image) and requirements/dev.txt (.venv,
# constrained to the same runtime versions); and the schema registry's Java runtime (scripts/registry/requirements.in)
# in scripts/registry/requirements.txt. All with hashes and no index address. Versions already pinned are kept unless
# their input excludes them or an upgrade is asked for (arguments go to `uv pip compile`, e.g. -P protobuf).
set -euo pipefail
source "$(dirname "$0")/env.sh"
uv=$("$K2_ROOT/scripts/tools.sh" uv)
cd "$K2_ROOT"
compile=("$uv" pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes --quiet "$@")
"${compile[@]}" --extra services -o requirements/runtime.txt
"${compile[@]}" --extra services --group dev -c requirements/runtime.txt -o requirements/dev.txt
"${compile[@]/pyproject.toml/scripts/registry/requirements.in}" -o scripts/registry/requirements.txt
