#!/usr/bin/env bash
# The project's own single-node Apache Kafka 4.x broker (KRaft, combined broker + controller) on 127.0.0.1.
#
# Usage: scripts/kafka.sh up|down|status
#   up      fetch the jars once (Maven), format storage once, start the broker, wait until it serves
#   down    stop it (SIGTERM, then SIGKILL after a bounded wait)
#   status  print whether it runs; exit 0 when running, 1 when not
#
# Environment:
#   KAFKA_BOOTSTRAP_SERVERS   set: use that Kafka instead, `up` only prints it
#   K2_KAFKA_PORT             client (PLAINTEXT) port, default 9092
#   K2_KAFKA_CONTROLLER_PORT  KRaft controller port, default 9093
#   K2_RUN_DIR                run state; the broker keeps config, pid and data in $K2_RUN_DIR/kafka
#   KAFKA_HEAP_OPTS           JVM heap flags, default "-Xmx512m -Xms512m"
#   K2_KAFKA_START_TIMEOUT    seconds `up` waits for the broker to serve, default 90
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
SCRIPT=kafka.sh
source "$K2_ROOT/scripts/java_server.sh"

KAFKA_SOURCES="$K2_ROOT/scripts/kafka"
KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$KAFKA_SOURCES/pom.xml")
KAFKA_HOME="$K2_CACHE/kafka-$KAFKA_VERSION"
KAFKA_LIBS="$KAFKA_HOME/libs"

PLAINTEXT_PORT="${K2_KAFKA_PORT:-9092}"
CONTROLLER_PORT="${K2_KAFKA_CONTROLLER_PORT:-9093}"
BOOTSTRAP="127.0.0.1:$PLAINTEXT_PORT"
START_TIMEOUT_SECONDS="${K2_KAFKA_START_TIMEOUT:-90}"
STOP_TIMEOUT_SECONDS=30

STATE_DIR="$K2_RUN_DIR/kafka"
DATA_DIR="$STATE_DIR/data"
CONFIG_FILE="$STATE_DIR/server.properties"
PID_FILE="$STATE_DIR/kafka.pid"
LOCK_FILE="$STATE_DIR/lock"
LOG_FILE="$K2_RUN_DIR/logs/kafka.log"
PYTHON="$K2_ROOT/.venv/bin/python"

# Class-data-sharing archive of the broker's classes: halves JVM start-up. The first broker of a JDK + jar set dumps it
# into its run dir when it exits (`down`), which then installs it in the cache for every later start.
JAVA_RUNTIME=$(sed -n 's/^JAVA_RUNTIME_VERSION="\(.*\)"/\1/p' \
  "$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")/release" 2>/dev/null || true)
CDS_ARCHIVE="$KAFKA_HOME/broker-classes-jdk-${JAVA_RUNTIME:-unknown}.jsa"
CDS_DUMP="$STATE_DIR/broker-classes.jsa"

read -ra HEAP_FLAGS <<<"${KAFKA_HEAP_OPTS:--Xmx512m -Xms512m}"
KAFKA_JAVA=(
  java "${HEAP_FLAGS[@]}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError
  -Djava.awt.headless=true "-Dlog4j2.configurationFile=$KAFKA_SOURCES/log4j2.xml" -cp "$KAFKA_LIBS/*"
)

# The broker's jars from Maven into $KAFKA_LIBS, once per pom.xml content (a class-data-sharing archive of older
# jars goes with them).
ensure_jars() {
  maven_fetch "$KAFKA_SOURCES/pom.xml" "$KAFKA_LIBS" "the Kafka $KAFKA_VERSION jars" remove_cds_archives
}

remove_cds_archives() {
  rm -f "$KAFKA_HOME"/*.jsa
}

broker_pid() {
  server_pid "$PID_FILE" "kafka.Kafka $CONFIG_FILE"
}

write_config() {
  sed -e "s|@PLAINTEXT_PORT@|$PLAINTEXT_PORT|g" \
    -e "s|@CONTROLLER_PORT@|$CONTROLLER_PORT|g" \
    -e "s|@LOG_DIRS@|$DATA_DIR|g" \
    "$KAFKA_SOURCES/server.properties.template" >"$CONFIG_FILE"
}

format_storage_once() {
  [[ -f $DATA_DIR/meta.properties ]] && return 0
  local cluster_id
  cluster_id=$("$PYTHON" -c 'import base64, uuid; print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))')
  echo "Formatting Kafka storage in $DATA_DIR (cluster id $cluster_id)"
  local cds_flags=()
  [[ -f $CDS_ARCHIVE ]] && cds_flags=("-XX:SharedArchiveFile=$CDS_ARCHIVE")
  "${KAFKA_JAVA[@]}" "${cds_flags[@]}" kafka.tools.StorageTool format --cluster-id "$cluster_id" --config "$CONFIG_FILE" >>"$LOG_FILE" 2>&1 \
    || { show_log_tail; die "formatting the Kafka storage in $DATA_DIR failed"; }
}

# A broker that exited cleanly has written its class-data-sharing dump; share it with every later start.
install_cds_dump() {
  [[ -f $CDS_DUMP ]] || return 0
  if [[ ! -f $CDS_ARCHIVE ]]; then
    cp "$CDS_DUMP" "$CDS_ARCHIVE.partial.$$"
    mv "$CDS_ARCHIVE.partial.$$" "$CDS_ARCHIVE"
  fi
  rm -f "$CDS_DUMP"
}

cmd_up() {
  if [[ -n ${KAFKA_BOOTSTRAP_SERVERS:-} ]]; then
    echo "Kafka serving on $KAFKA_BOOTSTRAP_SERVERS (external, from KAFKA_BOOTSTRAP_SERVERS)"
    return 0
  fi
  command -v java >/dev/null || die "java (17 or later) is not installed"
  [[ -x $PYTHON ]] || die "$PYTHON is missing (it checks that the broker serves); run scripts/bootstrap.sh first"
  mkdir -p "$STATE_DIR" "$DATA_DIR" "$(dirname "$LOG_FILE")"
  exec 8>"$LOCK_FILE"
  flock 8

  local pid
  if pid=$(broker_pid); then
    port_open "$PLAINTEXT_PORT" \
      || die "Kafka (pid $pid) from $STATE_DIR runs but does not serve on $BOOTSTRAP; run scripts/kafka.sh down"
    echo "Kafka serving on $BOOTSTRAP"
    return 0
  fi
  rm -f "$PID_FILE"
  for port in "$PLAINTEXT_PORT" "$CONTROLLER_PORT"; do
    if port_open "$port"; then
      die "port 127.0.0.1:$port is already in use by another process (set K2_KAFKA_PORT / K2_KAFKA_CONTROLLER_PORT)"
    fi
  done

  ensure_jars
  write_config
  if [[ -f $LOG_FILE ]]; then
    mv "$LOG_FILE" "$LOG_FILE.1"
  fi
  format_storage_once

  local cds_flag="-XX:SharedArchiveFile=$CDS_ARCHIVE"
  if [[ ! -f $CDS_ARCHIVE ]]; then
    rm -f "$CDS_DUMP"
    cds_flag="-XX:ArchiveClassesAtExit=$CDS_DUMP"
  fi
  # Started from this non-interactive script, the background java ignores SIGINT; nohup makes it ignore SIGHUP.
  nohup "${KAFKA_JAVA[@]}" "$cds_flag" kafka.Kafka "$CONFIG_FILE" >>"$LOG_FILE" 2>&1 </dev/null 8>&- &
  pid=$!
  echo "$pid" >"$PID_FILE"

  local ready=0
  "$PYTHON" "$KAFKA_SOURCES/wait_ready.py" "$BOOTSTRAP" "$pid" "$START_TIMEOUT_SECONDS" || ready=$?
  case $ready in
    0) echo "Kafka serving on $BOOTSTRAP" ;;
    2)
      rm -f "$PID_FILE"
      show_log_tail
      die "Kafka exited during startup"
      ;;
    *)
      stop_pid "$pid" Kafka || true
      rm -f "$PID_FILE"
      show_log_tail
      die "Kafka did not serve on $BOOTSTRAP within ${START_TIMEOUT_SECONDS}s; stopped it"
      ;;
  esac
}

cmd_down() {
  mkdir -p "$STATE_DIR"
  exec 8>"$LOCK_FILE"
  flock 8
  local pid
  if pid=$(broker_pid); then
    if stop_pid "$pid" Kafka; then
      install_cds_dump
    fi
    echo "Kafka stopped"
  else
    echo "Kafka not running"
  fi
  rm -f "$PID_FILE"
}

cmd_status() {
  local pid
  if pid=$(broker_pid); then
    echo "Kafka running (pid $pid) on $(sed -n 's|^advertised.listeners=PLAINTEXT://||p' "$CONFIG_FILE")"
  else
    echo "Kafka not running"
    return 1
  fi
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) die "usage: scripts/kafka.sh up|down|status" ;;
esac
