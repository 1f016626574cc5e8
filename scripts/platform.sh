#!/usr/bin/env bash
# The whole platform on the embedded defaults: Kafka (KRaft), topics, ingest (Binance feed + ASX sample), writer,
# query. Everything runs in the background; logs in $K2_RUN_DIR/logs, pids in $K2_RUN_DIR/pids. Idempotent.
#
# Usage: scripts/platform.sh up|down|status
#   K2_BINANCE_MODE=auto|live|replay  auto (default): live Binance when reachable, the local replay exchange otherwise
#   K2_TRACING=1                      also a local Jaeger (scripts/jaeger.sh), the services exporting their traces to it
#   K2_REGISTRY=1                     also the local schema registry (scripts/registry.sh), the services writing Kafka
#                                     messages in its framing (K2_KAFKA_SCHEMA_REGISTRY_URL: set it for another one)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$K2_ROOT"
PY="$K2_ROOT/.venv/bin/python"
PIDS="$K2_RUN_DIR/pids"
LOGS="$K2_RUN_DIR/logs"
REPLAY_PORT="${K2_REPLAY_PORT:-9443}"
mkdir -p "$PIDS" "$LOGS"

running() { [ -f "$PIDS/$1.pid" ] && kill -0 "$(cat "$PIDS/$1.pid")" 2>/dev/null; }

start() {  # start NAME COMMAND...: a background process with its log and pid, unless it already runs
  local name=$1; shift
  if running "$name"; then echo "$name already running (pid $(cat "$PIDS/$name.pid"))"; return; fi
  nohup "$@" >>"$LOGS/$name.log" 2>&1 &
  echo $! >"$PIDS/$name.pid"
}

stop() {
  local name=$1
  running "$name" || { rm -f "$PIDS/$name.pid"; return 0; }
  local pid; pid=$(cat "$PIDS/$name.pid")
  kill -TERM "$pid"
  for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$pid" 2>/dev/null && { echo "$name did not stop in 30 s, killing" >&2; kill -KILL "$pid"; }
  rm -f "$PIDS/$name.pid"
  echo "$name stopped"
}

wait_healthy() {  # wait_healthy NAME PORT: until grpc.health.v1 says SERVING (bounded), or show the log tail
  "$PY" - "$1" "$2" "$LOGS/$1.log" <<'PYEOF' || exit 1
import sys, time, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
name, port, log = sys.argv[1], sys.argv[2], sys.argv[3]
deadline = time.monotonic() + 90
with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
    stub = health_pb2_grpc.HealthStub(channel)
    while time.monotonic() < deadline:
        try:
            if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == health_pb2.HealthCheckResponse.SERVING:
                print(f"{name} serving on 127.0.0.1:{port}")
                sys.exit(0)
        except grpc.RpcError:
            pass
        time.sleep(0.5)
print(f"{name} did not become healthy in 90 s; last log lines:", file=sys.stderr)
print("".join(open(log).readlines()[-30:]), file=sys.stderr)
sys.exit(1)
PYEOF
}

# switched_on VARIABLE: whether a `make up` switch (K2_TRACING, K2_REGISTRY) is on.
switched_on() {
  case "${!1:-}" in
    1 | true | yes | on) return 0 ;;
    "" | 0 | false | no | off) return 1 ;;
    *) echo "$1 (make up ${1#K2_}=...): '${!1}' is neither 1 nor 0" >&2; exit 2 ;;
  esac
}

tracing_enabled() { switched_on K2_TRACING; }

# Starts the local Jaeger (built from source once, then cached) and points the services' OTLP export at it.
start_tracing() {
  ./scripts/jaeger.sh up
  export OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:${K2_JAEGER_OTLP_PORT:-4317}"
  unset OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
  # Locally every new trace is sampled, unless OTEL_TRACES_SAMPLER says otherwise (the services' default is 1 %).
  export OTEL_TRACES_SAMPLER="${OTEL_TRACES_SAMPLER:-parentbased_always_on}"
}

binance_reachable() {
  "$PY" -c 'import socket, ssl, sys
try:
    with socket.create_connection(("stream.binance.com", 9443), timeout=3) as s:
        ssl.create_default_context().wrap_socket(s, server_hostname="stream.binance.com").close()
except OSError:
    sys.exit(1)' 2>/dev/null
}

up() {
  ./scripts/kafka.sh up
  "$PY" -m k2.core.kafka
  if [ ! -s "$K2_RUN_DIR/token" ]; then
    (umask 077; "$PY" -c 'import secrets; print(secrets.token_urlsafe(32))' >"$K2_RUN_DIR/token")
  fi
  export K2_AUTH_TOKEN_FILE="$K2_RUN_DIR/token"
  if tracing_enabled; then start_tracing; fi
  if switched_on K2_REGISTRY && [ -z "${K2_KAFKA_SCHEMA_REGISTRY_URL:-}" ]; then
    ./scripts/registry.sh up
    K2_KAFKA_SCHEMA_REGISTRY_URL=$(cat "$K2_RUN_DIR/registry/url")
    export K2_KAFKA_SCHEMA_REGISTRY_URL
  fi

  local mode="${K2_BINANCE_MODE:-auto}"
  if [ "$mode" = auto ]; then
    if binance_reachable; then mode=live; else mode=replay; fi
  fi
  export K2_INGEST_BINANCE_ENABLED=true
  if [ "$mode" = replay ]; then
    start replay_exchange "$PY" -m k2.services.replay_exchange --host 127.0.0.1 --port "$REPLAY_PORT" \
      --symbols "${K2_REPLAY_SYMBOLS:-BTCUSDT,ETHUSDT}" --rate realtime
    export K2_INGEST_BINANCE_ENDPOINTS="[\"ws://127.0.0.1:$REPLAY_PORT\"]"
    export K2_INGEST_BINANCE_REST_ENDPOINT="http://127.0.0.1:$REPLAY_PORT"  # gap backfill (historicalTrades)
    echo "Binance feed: live Binance is not reachable; using the local replay exchange on ws://127.0.0.1:$REPLAY_PORT"
  else
    echo "Binance feed: live Binance"
  fi

  OTEL_SERVICE_NAME=ingest start ingest "$PY" -m k2.services.ingest
  OTEL_SERVICE_NAME=writer start writer "$PY" -m k2.services.writer
  OTEL_SERVICE_NAME=query start query "$PY" -m k2.services.query
  wait_healthy ingest "${K2_INGEST_PORT:-50051}"
  wait_healthy writer "${K2_WRITER_PORT:-50052}"
  wait_healthy query "${K2_QUERY_PORT:-50053}"

  if [ ! -f "$K2_RUN_DIR/asx-sample.loaded" ]; then
    echo "Loading the ASX sample (trades and quotes of BHP, DVN, MWR)..."
    .venv/bin/k2 load asx "$K2_ROOT/data/asx/trades" "$K2_ROOT/data/asx/quotes"
    touch "$K2_RUN_DIR/asx-sample.loaded"
  fi
  local tracing="  Tracing:       make up TRACING=1 (a local Jaeger, every trace sampled)"
  if tracing_enabled; then
    tracing="  Traces:        .venv/bin/k2 trace <trade_id or message_id>   (Jaeger API: http://127.0.0.1:${K2_JAEGER_QUERY_PORT:-16686})"
  fi
  cat <<MSG

K2 is up. Logs: $LOGS
  Live trades:   .venv/bin/k2 subscribe BTCUSDT
  History:       .venv/bin/k2 trades BHP --start 2014-03-10 --end 2014-03-11
  Bars:          .venv/bin/k2 bars BHP --interval 1m --start 2014-03-10 --end 2014-03-11
  Dashboard:     .venv/bin/k2 demo
$tracing
  Status:        .venv/bin/k2 status      (write token for grpcurl: $K2_RUN_DIR/token)
  Stop:          make down
MSG
  if [ -n "${K2_KAFKA_SCHEMA_REGISTRY_URL:-}" ]; then
    echo "  Kafka messages are registry-framed; schemas in $K2_KAFKA_SCHEMA_REGISTRY_URL"
  fi
}

jaeger_running() { ./scripts/jaeger.sh status >/dev/null 2>&1; }
registry_running() { ./scripts/registry.sh status >/dev/null 2>&1; }

down() {
  for name in query writer ingest replay_exchange; do stop "$name"; done
  # After the services, whose last spans are exported as they stop.
  if jaeger_running; then ./scripts/jaeger.sh down; fi
  if registry_running; then ./scripts/registry.sh down; fi
  ./scripts/kafka.sh down
}

status() {
  for name in replay_exchange ingest writer query; do
    if running "$name"; then echo "$name: running (pid $(cat "$PIDS/$name.pid"))"; else echo "$name: stopped"; fi
  done
  ./scripts/kafka.sh status || true
  if jaeger_running; then echo "jaeger: $(./scripts/jaeger.sh status)"; fi
  if registry_running; then ./scripts/registry.sh status; fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
