#!/usr/bin/env bash
# Runs every benchmark in bench/ (each prints one JSON object) and collects them, one line each, into
# .run/bench/latest.jsonl with the machine they ran on.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$K2_ROOT"
out="$K2_RUN_DIR/bench/latest.jsonl"
mkdir -p "$(dirname "$out")"
.venv/bin/python -c 'import json, os, platform; print(json.dumps({"machine": {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(), "python": platform.python_version(), "system": platform.platform()}}))' > "$out"
for bench in bench/[!_]*.py; do
  name=$(basename "$bench" .py)
  echo "== $name" >&2
  result=$(.venv/bin/python "$bench" "$@")
  echo "$result"
  printf '{"%s": %s}\n' "$name" "$result" >> "$out"
done
echo "figures in $out" >&2
