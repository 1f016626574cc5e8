#!/usr/bin/env bash
# Usage: scripts/jaeger.sh up|down|status
# Runs the Jaeger v2 all-in-one (built by scripts/tools.sh) in the background with in-memory storage, every port bound
# to 127.0.0.1. Ports come from K2_JAEGER_OTLP_PORT, K2_JAEGER_OTLP_HTTP_PORT, K2_JAEGER_QUERY_PORT and
# K2_JAEGER_QUERY_GRPC_PORT; run state lives in $K2_RUN_DIR, so a second instance needs its own K2_RUN_DIR and ports.
# The binary built from Jaeger's Go module serves the query API and a placeholder page, not the UI (no package
# registry carries the UI's assets); K2_JAEGER_UI_ASSETS names a folder with a jaeger-ui build to serve instead.
set -euo pipefail
source "$(dirname "$0")/env.sh"

OTLP_GRPC_PORT="${K2_JAEGER_OTLP_PORT:-4317}"
OTLP_HTTP_PORT="${K2_JAEGER_OTLP_HTTP_PORT:-4318}"
QUERY_HTTP_PORT="${K2_JAEGER_QUERY_PORT:-16686}"
QUERY_GRPC_PORT="${K2_JAEGER_QUERY_GRPC_PORT:-16685}"
START_TIMEOUT_SECONDS="${K2_JAEGER_START_TIMEOUT:-60}"
STOP_TIMEOUT_SECONDS=15
MAX_TRACES_IN_MEMORY=100000
# A sampled send span names up to 5000 messages in events (~625 kB); room for an export batch of many of them.
MAX_OTLP_MESSAGE_MIB=64
UI_ASSETS="${K2_JAEGER_UI_ASSETS:-}"

STATE_DIR="$K2_RUN_DIR/jaeger"
CONFIG_FILE="$STATE_DIR/config.yaml"
PID_FILE="$STATE_DIR/jaeger.pid"
LOG_FILE="$K2_RUN_DIR/logs/jaeger.log"
QUERY_URL="http://127.0.0.1:$QUERY_HTTP_PORT"

log() { echo "jaeger.sh: $*" >&2; }

die() { log "error: $*"; exit 1; }

# Prints the pid of the Jaeger this run dir started, if that process is still alive (and is still Jaeger).
running_pid() {
  [ -f "$PID_FILE" ] || return 1
  local pid
  pid=$(cat "$PID_FILE")
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  local executable
  executable=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  [[ "$(basename "$executable")" == jaeger-* ]] || return 1
  echo "$pid"
}

port_listens() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

query_api_answers() {
  curl --silent --fail --max-time 2 --output /dev/null "$QUERY_URL/api/services"
}

write_config() {
  mkdir -p "$STATE_DIR"
  cat >"$CONFIG_FILE" <<EOF
# Written by scripts/jaeger.sh; edits are overwritten on the next 'up'.
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    # 'none' keeps the collector from serving its own Prometheus metrics on an extra port.
    metrics:
      level: none
    logs:
      level: info

extensions:
  jaeger_storage:
    backends:
      memory_store:
        memory:
          max_traces: $MAX_TRACES_IN_MEMORY
  jaeger_query:
    storage:
      traces: memory_store
    # Off so Jaeger's own query spans don't show up among the services.
    enable_tracing: false
    http:
      endpoint: 127.0.0.1:$QUERY_HTTP_PORT
    grpc:
      endpoint: 127.0.0.1:$QUERY_GRPC_PORT
$( [ -z "$UI_ASSETS" ] || printf '    ui:\n      assets_path: "%s"\n' "$UI_ASSETS" )

receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:$OTLP_GRPC_PORT
        max_recv_msg_size_mib: $MAX_OTLP_MESSAGE_MIB
      http:
        endpoint: 127.0.0.1:$OTLP_HTTP_PORT

processors:
  batch:

exporters:
  jaeger_storage_exporter:
    trace_storage: memory_store
EOF
}

wait_until_ready() {
  local pid=$1
  local deadline=$((SECONDS + START_TIMEOUT_SECONDS))
  until query_api_answers && port_listens "$OTLP_GRPC_PORT"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$LOG_FILE" >&2 || true
      die "Jaeger exited during startup; see $LOG_FILE"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail -n 20 "$LOG_FILE" >&2 || true
      die "Jaeger (pid $pid) not ready within ${START_TIMEOUT_SECONDS}s; see $LOG_FILE"
    fi
    sleep 0.5
  done
}

# What the query port serves, by the configuration the running Jaeger was started with.
served_page() {
  if grep -q '^ *assets_path:' "$CONFIG_FILE" 2>/dev/null; then echo "Jaeger UI"; else echo "Jaeger API (no UI)"; fi
}

up() {
  if [ -n "$UI_ASSETS" ] && [ ! -f "$UI_ASSETS/index.html" ]; then
    die "K2_JAEGER_UI_ASSETS=$UI_ASSETS has no index.html (expected a jaeger-ui build folder)"
  fi
  local pid
  if pid=$(running_pid); then
    log "already running (pid $pid)"
  else
    local port
    for port in "$OTLP_GRPC_PORT" "$OTLP_HTTP_PORT" "$QUERY_HTTP_PORT" "$QUERY_GRPC_PORT"; do
      ! port_listens "$port" || die "port $port on 127.0.0.1 is already in use (another Jaeger? set K2_JAEGER_*_PORT)"
    done
    local jaeger
    jaeger=$("$K2_ROOT/scripts/tools.sh" jaeger)
    write_config
    mkdir -p "$(dirname "$LOG_FILE")"
    rm -f "$PID_FILE"
    # New session, so a Ctrl-C in the terminal that ran 'up' doesn't reach it; exec keeps the pid written here.
    setsid bash -c 'echo $$ >"$1"; exec "$2" --config "$3"' jaeger "$PID_FILE" "$jaeger" "$CONFIG_FILE" \
      </dev/null >>"$LOG_FILE" 2>&1 &
    local waited=0
    until [ -s "$PID_FILE" ]; do
      [ $waited -lt 50 ] || die "Jaeger launcher did not record its pid in $PID_FILE"
      sleep 0.1
      waited=$((waited + 1))
    done
    pid=$(cat "$PID_FILE")
    log "started (pid $pid), logging to $LOG_FILE"
  fi
  wait_until_ready "$pid"
  echo "$(served_page) on $QUERY_URL, OTLP gRPC on 127.0.0.1:$OTLP_GRPC_PORT"
}

down() {
  local pid
  if ! pid=$(running_pid); then
    rm -f "$PID_FILE"
    log "not running"
    return
  fi
  kill -TERM "$pid"
  local deadline=$((SECONDS + STOP_TIMEOUT_SECONDS))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "pid $pid did not exit within ${STOP_TIMEOUT_SECONDS}s of SIGTERM; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  rm -f "$PID_FILE"
  log "stopped (pid $pid)"
}

status() {
  local pid
  if pid=$(running_pid); then
    if query_api_answers; then
      echo "running (pid $pid): $(served_page) on $QUERY_URL, OTLP gRPC on 127.0.0.1:$OTLP_GRPC_PORT"
    else
      echo "running (pid $pid) but the query API on $QUERY_URL does not answer"
    fi
  else
    echo "not running"
    return 3
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) die "usage: $0 up|down|status" ;;
esac
