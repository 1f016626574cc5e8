#!/usr/bin/env bash
# The project's own Apache Kafka 4.x on 127.0.0.1 (KRaft): one node by default, or a cluster of K2_KAFKA_BROKERS
# nodes, each its own process (combined broker + controller, all of them quorum voters), so that one can be
# killed or stopped while the others serve.
#
# Usage: scripts/kafka.sh up|down|status
#   up      fetch the jars once (Maven), format storage once, start every node not running, wait until each serves
#   down    stop every node (SIGTERM, then SIGKILL after a bounded wait)
#   status  print whether each node runs; exit 0 when one runs, 1 when none
#
# Environment:
#   KAFKA_BOOTSTRAP_SERVERS   set: use that Kafka instead, `up` only prints it
#   K2_KAFKA_BROKERS          nodes, default 1; with more, topics get 3 replicas (at most one a node) and acks=all
#                             writes need 2 in sync
#   K2_KAFKA_PORT             client (PLAINTEXT) port of node 1, default 9092; node n uses this + 2(n-1), or list
#                             one port a node, comma-separated
#   K2_KAFKA_CONTROLLER_PORT  KRaft controller port of node 1, default 9093; node n: this + 2(n-1), or a list
#   K2_RUN_DIR                run state: one node keeps config, pid and data in $K2_RUN_DIR/kafka, node n of a
#                             cluster in $K2_RUN_DIR/kafka/node-n (its pid in kafka.pid there); logs in
#                             $K2_RUN_DIR/logs/kafka.log, kafka-n.log
#   KAFKA_HEAP_OPTS           JVM heap flags, default "-Xmx512m -Xms512m"
#   K2_KAFKA_START_TIMEOUT    seconds `up` waits for the nodes to serve, default 90
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
SCRIPT=kafka.sh
source "$K2_ROOT/scripts/java_server.sh"

KAFKA_SOURCES="$K2_ROOT/scripts/kafka"
KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$KAFKA_SOURCES/pom.xml")
KAFKA_HOME="$K2_CACHE/kafka-$KAFKA_VERSION"
KAFKA_LIBS="$KAFKA_HOME/libs"

BROKERS="${K2_KAFKA_BROKERS:-1}"
[[ $BROKERS =~ ^[1-9]$ ]] || die "K2_KAFKA_BROKERS must be 1 to 9: $BROKERS"
START_TIMEOUT_SECONDS="${K2_KAFKA_START_TIMEOUT:-90}"
STOP_TIMEOUT_SECONDS=30
STATE_ROOT="$K2_RUN_DIR/kafka"
LOCK_FILE="$STATE_ROOT/lock"
CLUSTER_ID_FILE="$STATE_ROOT/cluster-id"
PYTHON="$K2_ROOT/.venv/bin/python"
REPLICATION_FACTOR=$((BROKERS < 3 ? BROKERS : 3))
MIN_ISR=$((REPLICATION_FACTOR < 2 ? 1 : 2))

# ports ARRAY VALUE: one port a node into ARRAY, from VALUE, a comma-separated list, or node 1's port.
ports() {
  local -n list=$1
  local value=$2
  IFS=, read -ra list <<<"$value"
  if ((${#list[@]} == 1)); then
    [[ $value =~ ^[0-9]+$ ]] || die "not a port: $value"
    list=()
    for ((n = 0; n < BROKERS; n++)); do list+=($((value + 2 * n))); done
  fi
  ((${#list[@]} == BROKERS)) || die "$value: expected $BROKERS ports"
}
ports PLAINTEXT_PORTS "${K2_KAFKA_PORT:-9092}"
ports CONTROLLER_PORTS "${K2_KAFKA_CONTROLLER_PORT:-9093}"
VOTERS=""
for ((n = 1; n <= BROKERS; n++)); do
  VOTERS+="${VOTERS:+,}$n@127.0.0.1:${CONTROLLER_PORTS[n - 1]}"
done
BOOTSTRAP=""
for port in "${PLAINTEXT_PORTS[@]}"; do BOOTSTRAP+="${BOOTSTRAP:+,}127.0.0.1:$port"; done

# Class-data-sharing archive of the broker's classes: halves JVM start-up. The first node of a JDK + jar set dumps
# it into its state dir when it exits (`down`), which then installs it in the cache for every later start.
JAVA_RUNTIME=$(sed -n 's/^JAVA_RUNTIME_VERSION="\(.*\)"/\1/p' \
  "$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")/release" 2>/dev/null || true)
CDS_ARCHIVE="$KAFKA_HOME/broker-classes-jdk-${JAVA_RUNTIME:-unknown}.jsa"

read -ra HEAP_FLAGS <<<"${KAFKA_HEAP_OPTS:--Xmx512m -Xms512m}"
KAFKA_JAVA=(
  java "${HEAP_FLAGS[@]}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError
  -Djava.awt.headless=true "-Dlog4j2.configurationFile=$KAFKA_SOURCES/log4j2.xml" -cp "$KAFKA_LIBS/*"
)

# use_node N: the paths and ports of node N (1-based) in the globals the functions below read.
use_node() {
  NODE=$1
  PLAINTEXT_PORT=${PLAINTEXT_PORTS[NODE - 1]}
  CONTROLLER_PORT=${CONTROLLER_PORTS[NODE - 1]}
  if ((BROKERS == 1)); then
    use_state_dir "$STATE_ROOT"
    LOG_FILE="$K2_RUN_DIR/logs/kafka.log"
  else
    use_state_dir "$STATE_ROOT/node-$NODE"
    LOG_FILE="$K2_RUN_DIR/logs/kafka-$NODE.log"
  fi
}

use_state_dir() {
  STATE_DIR=$1
  DATA_DIR="$STATE_DIR/data"
  CONFIG_FILE="$STATE_DIR/server.properties"
  PID_FILE="$STATE_DIR/kafka.pid"
  CDS_DUMP="$STATE_DIR/broker-classes.jsa"
}

# The broker's jars from Maven into $KAFKA_LIBS, once per pom.xml content (a class-data-sharing archive of older
# jars goes with them).
ensure_jars() {
  maven_fetch "$KAFKA_SOURCES/pom.xml" "$KAFKA_LIBS" "the Kafka $KAFKA_VERSION jars" remove_cds_archives
}

remove_cds_archives() {
  rm -f "$KAFKA_HOME"/*.jsa
}

node_pid() {
  server_pid "$PID_FILE" "kafka.Kafka $CONFIG_FILE"
}

write_config() {
  sed -e "s|@NODE_ID@|$NODE|g" \
    -e "s|@VOTERS@|$VOTERS|g" \
    -e "s|@PLAINTEXT_PORT@|$PLAINTEXT_PORT|g" \
    -e "s|@CONTROLLER_PORT@|$CONTROLLER_PORT|g" \
    -e "s|@LOG_DIRS@|$DATA_DIR|g" \
    -e "s|@REPLICATION_FACTOR@|$REPLICATION_FACTOR|g" \
    -e "s|@MIN_ISR@|$MIN_ISR|g" \
    "$KAFKA_SOURCES/server.properties.template" >"$CONFIG_FILE"
}

# Every node of a cluster is formatted with the same cluster id, made once. It is passed as --cluster-id=ID: a
# random id may begin with "-", which the tool would take for an option.
cluster_id() {
  if [[ ! -s $CLUSTER_ID_FILE ]]; then
    "$PYTHON" -c 'import base64, uuid; print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))' \
      >"$CLUSTER_ID_FILE"
  fi
  cat "$CLUSTER_ID_FILE"
}

format_storage_once() {
  [[ -f $DATA_DIR/meta.properties ]] && return 0
  local id
  id=$(cluster_id)
  echo "Formatting Kafka storage in $DATA_DIR (cluster id $id)"
  local cds_flags=()
  [[ -f $CDS_ARCHIVE ]] && cds_flags=("-XX:SharedArchiveFile=$CDS_ARCHIVE")
  "${KAFKA_JAVA[@]}" "${cds_flags[@]}" kafka.tools.StorageTool format --cluster-id="$id" --config "$CONFIG_FILE" \
    >>"$LOG_FILE" 2>&1 || { show_log_tail; die "formatting the Kafka storage in $DATA_DIR failed"; }
}

# A node that exited cleanly has written its class-data-sharing dump; share it with every later start.
install_cds_dump() {
  [[ -f $CDS_DUMP ]] || return 0
  if [[ ! -f $CDS_ARCHIVE ]]; then
    cp "$CDS_DUMP" "$CDS_ARCHIVE.partial.$$"
    mv "$CDS_ARCHIVE.partial.$$" "$CDS_ARCHIVE"
  fi
  rm -f "$CDS_DUMP"
}

# start_node: starts the node selected by use_node in the background; its pid goes to its pid file.
start_node() {
  mkdir -p "$STATE_DIR" "$DATA_DIR" "$(dirname "$LOG_FILE")"
  rm -f "$PID_FILE"
  for port in "$PLAINTEXT_PORT" "$CONTROLLER_PORT"; do
    if port_open "$port"; then
      die "port 127.0.0.1:$port is already in use by another process (set K2_KAFKA_PORT / K2_KAFKA_CONTROLLER_PORT)"
    fi
  done
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
  echo $! >"$PID_FILE"
}

# wait_node_ready: until the node selected by use_node serves and is listed in the cluster's metadata.
wait_node_ready() {
  local pid ready=0
  pid=$(<"$PID_FILE")
  "$PYTHON" "$KAFKA_SOURCES/wait_ready.py" "127.0.0.1:$PLAINTEXT_PORT" "$pid" "$START_TIMEOUT_SECONDS" "$NODE" \
    || ready=$?
  case $ready in
    0) ;;
    2)
      rm -f "$PID_FILE"
      show_log_tail
      die "Kafka node $NODE exited during startup"
      ;;
    *)
      stop_pid "$pid" "Kafka node $NODE" || true
      rm -f "$PID_FILE"
      show_log_tail
      die "Kafka node $NODE did not serve on 127.0.0.1:$PLAINTEXT_PORT within ${START_TIMEOUT_SECONDS}s; stopped it"
      ;;
  esac
}

cmd_up() {
  if [[ -n ${KAFKA_BOOTSTRAP_SERVERS:-} ]]; then
    echo "Kafka serving on $KAFKA_BOOTSTRAP_SERVERS (external, from KAFKA_BOOTSTRAP_SERVERS)"
    return 0
  fi
  command -v java >/dev/null || die "java (17 or later) is not installed"
  [[ -x $PYTHON ]] || die "$PYTHON is missing (it checks that the broker serves); run scripts/bootstrap.sh first"
  mkdir -p "$STATE_ROOT"
  exec 8>"$LOCK_FILE"
  flock 8

  local started=() pid
  for ((n = 1; n <= BROKERS; n++)); do
    use_node "$n"
    if pid=$(node_pid); then
      port_open "$PLAINTEXT_PORT" \
        || die "Kafka node $n (pid $pid) from $STATE_DIR runs but does not serve on 127.0.0.1:$PLAINTEXT_PORT; run scripts/kafka.sh down"
      continue
    fi
    ensure_jars
    start_node
    started+=("$n")
  done
  # Every node is started before waiting for any: a cluster's first node serves once a quorum of voters runs.
  for n in "${started[@]}"; do
    use_node "$n"
    wait_node_ready
  done
  echo "Kafka serving on $BOOTSTRAP"
}

# The state folders of the nodes that were started here: the single node's, or those of a cluster.
state_dirs() {
  local dir
  for dir in "$STATE_ROOT" "$STATE_ROOT"/node-*; do
    [[ -f $dir/server.properties ]] && echo "$dir"
  done
  return 0
}

cmd_down() {
  mkdir -p "$STATE_ROOT"
  exec 8>"$LOCK_FILE"
  flock 8
  local dir pid dirs=() pids=()
  for dir in $(state_dirs); do
    use_state_dir "$dir"
    if pid=$(node_pid); then
      dirs+=("$dir")
      pids+=("$pid")
    else
      rm -f "$PID_FILE"
    fi
  done
  # Every node at once: one by one, the last nodes would lose their controller quorum and hang in shutdown.
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
    kill -CONT "$pid" 2>/dev/null || true
  done
  for i in "${!pids[@]}"; do
    use_state_dir "${dirs[i]}"
    if stop_pid "${pids[i]}" "$(node_label)"; then
      install_cds_dump
    fi
    rm -f "$PID_FILE"
  done
  if ((${#pids[@]})); then echo "Kafka stopped"; else echo "Kafka not running"; fi
}

node_label() {
  if [[ $STATE_DIR == "$STATE_ROOT" ]]; then echo Kafka; else echo "Kafka node ${STATE_DIR##*/node-}"; fi
}

cmd_status() {
  local dir pid running=0
  for dir in $(state_dirs); do
    use_state_dir "$dir"
    if pid=$(node_pid); then
      echo "$(node_label) running (pid $pid) on $(sed -n 's|^advertised.listeners=PLAINTEXT://||p' "$CONFIG_FILE")"
      running=$((running + 1))
    fi
  done
  ((running)) || { echo "Kafka not running"; return 1; }
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) die "usage: scripts/kafka.sh up|down|status" ;;
esac
