#!/usr/bin/env bash
# A local S3-compatible server for an Iceberg warehouse: s3proxy (Apache-2.0) on its filesystem backend, on
# 127.0.0.1, with S3 v4 signatures and an access key and secret generated for this run folder.
#
# Usage: scripts/s3.sh up|down|status
#   up      fetch the jar once (Maven), generate the credentials once, start the server, wait until it serves;
#           prints the endpoint and, as its last line, the env file a client of it loads: K2_ICEBERG_S3_* for
#           the services, and the AWS SDK checksum settings this server needs
#   down    stop it (SIGTERM, then SIGKILL after a bounded wait); the data and credentials stay
#   status  print whether it runs; exit 0 when running, 1 when not
#
# Environment:
#   K2_S3_PORT           port, default 9000
#   K2_RUN_DIR           run state; the server keeps config, credentials, pid and data in $K2_RUN_DIR/s3
#   K2_S3_START_TIMEOUT  seconds `up` waits for the server, default 60
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
SCRIPT=s3.sh
source "$K2_ROOT/scripts/java_server.sh"

S3_SOURCES="$K2_ROOT/scripts/s3"
S3PROXY_VERSION=$(sed -n 's:.*<s3proxy.version>\(.*\)</s3proxy.version>.*:\1:p' "$S3_SOURCES/pom.xml")
S3PROXY_HOME="$K2_CACHE/s3proxy-$S3PROXY_VERSION"
S3PROXY_LIBS="$S3PROXY_HOME/libs"
S3PROXY_JAR="$S3PROXY_LIBS/s3proxy-$S3PROXY_VERSION-jar-with-dependencies.jar"

PORT="${K2_S3_PORT:-9000}"
ENDPOINT="http://127.0.0.1:$PORT"
REGION="us-east-1"
START_TIMEOUT_SECONDS="${K2_S3_START_TIMEOUT:-60}"
STOP_TIMEOUT_SECONDS=30

STATE_DIR="$K2_RUN_DIR/s3"
DATA_DIR="$STATE_DIR/data"
CONFIG_FILE="$STATE_DIR/s3proxy.properties"
ENV_FILE="$STATE_DIR/s3.env"
PID_FILE="$STATE_DIR/s3proxy.pid"
LOCK_FILE="$STATE_DIR/lock"
LOG_FILE="$K2_RUN_DIR/logs/s3.log"

s3proxy_pid() {
  server_pid "$PID_FILE" "--properties $CONFIG_FILE"
}

# The credentials belong to the run folder: generated on its first start, kept with its data.
generate_credentials_once() {
  [[ -s $STATE_DIR/credentials ]] && return 0
  local access_key secret_key
  access_key="k2-$(od -An -tx1 -N8 /dev/urandom | tr -d ' \n')"
  secret_key=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')
  (
    umask 077
    printf 'K2_ICEBERG_S3_ACCESS_KEY_ID=%s\nK2_ICEBERG_S3_SECRET_ACCESS_KEY=%s\n' "$access_key" "$secret_key" \
      >"$STATE_DIR/credentials"
  )
}

# The env file a caller sources: endpoint and region of this start, the run folder's credentials.
write_config() {
  # shellcheck source=/dev/null
  source "$STATE_DIR/credentials"
  (
    umask 077
    cat >"$CONFIG_FILE" <<EOF
s3proxy.endpoint=$ENDPOINT
s3proxy.authorization=aws-v4
s3proxy.identity=$K2_ICEBERG_S3_ACCESS_KEY_ID
s3proxy.credential=$K2_ICEBERG_S3_SECRET_ACCESS_KEY
jclouds.provider=filesystem-nio2
# The filesystem backend has no credentials of its own, but s3proxy requires the properties.
jclouds.identity=local
jclouds.credential=local
jclouds.filesystem.basedir=$DATA_DIR
EOF
    cat >"$ENV_FILE" <<EOF
K2_ICEBERG_S3_ENDPOINT=$ENDPOINT
K2_ICEBERG_S3_REGION=$REGION
K2_ICEBERG_S3_ACCESS_KEY_ID=$K2_ICEBERG_S3_ACCESS_KEY_ID
K2_ICEBERG_S3_SECRET_ACCESS_KEY=$K2_ICEBERG_S3_SECRET_ACCESS_KEY
# s3proxy $S3PROXY_VERSION does not take the AWS SDKs' default checksums (aws-chunked uploads with a trailer,
# x-amz-checksum-mode on reads): its clients compute and ask for checksums only where S3 requires them.
AWS_REQUEST_CHECKSUM_CALCULATION=WHEN_REQUIRED
AWS_RESPONSE_CHECKSUM_VALIDATION=WHEN_REQUIRED
EOF
  )
}

cmd_up() {
  command -v java >/dev/null || die "java (17 or later) is not installed"
  mkdir -p "$STATE_DIR" "$DATA_DIR" "$(dirname "$LOG_FILE")"
  exec 8>"$LOCK_FILE"
  flock 8

  local pid
  if pid=$(s3proxy_pid); then
    local running_endpoint
    running_endpoint=$(sed -n 's/^s3proxy.endpoint=//p' "$CONFIG_FILE")
    port_open "${running_endpoint##*:}" \
      || die "s3proxy (pid $pid) from $STATE_DIR runs but does not serve on $running_endpoint; run scripts/s3.sh down"
    echo "S3 (s3proxy) serving on $running_endpoint"
    echo "$ENV_FILE"
    return 0
  fi
  rm -f "$PID_FILE"
  port_open "$PORT" && die "port 127.0.0.1:$PORT is already in use by another process (set K2_S3_PORT)"

  maven_fetch "$S3_SOURCES/pom.xml" "$S3PROXY_LIBS" "s3proxy $S3PROXY_VERSION"
  generate_credentials_once
  write_config
  if [[ -f $LOG_FILE ]]; then
    mv "$LOG_FILE" "$LOG_FILE.1"
  fi
  # Started from this non-interactive script, the background java ignores SIGINT; nohup makes it ignore SIGHUP.
  nohup java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:+ExitOnOutOfMemoryError \
    -Dlogback.statusListenerClass=ch.qos.logback.core.status.NopStatusListener -jar "$S3PROXY_JAR" --properties "$CONFIG_FILE" >>"$LOG_FILE" 2>&1 </dev/null 8>&- &
  pid=$!
  echo "$pid" >"$PID_FILE"

  local waited=0
  until port_open "$PORT"; do
    if ! process_running "$pid"; then
      rm -f "$PID_FILE"
      show_log_tail
      die "s3proxy exited during startup"
    fi
    if ((waited++ >= START_TIMEOUT_SECONDS * 10)); then
      stop_pid "$pid" s3proxy || true
      rm -f "$PID_FILE"
      show_log_tail
      die "s3proxy did not serve on $ENDPOINT within ${START_TIMEOUT_SECONDS}s; stopped it"
    fi
    sleep 0.1
  done
  echo "S3 (s3proxy) serving on $ENDPOINT"
  echo "$ENV_FILE"
}

cmd_down() {
  mkdir -p "$STATE_DIR"
  exec 8>"$LOCK_FILE"
  flock 8
  local pid
  if pid=$(s3proxy_pid); then
    stop_pid "$pid" s3proxy || true
    echo "s3proxy stopped"
  else
    echo "s3proxy not running"
  fi
  rm -f "$PID_FILE"
}

cmd_status() {
  local pid
  if pid=$(s3proxy_pid); then
    echo "s3proxy running (pid $pid) on $(sed -n 's/^s3proxy.endpoint=//p' "$CONFIG_FILE")"
  else
    echo "s3proxy not running"
    return 1
  fi
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) die "usage: scripts/s3.sh up|down|status" ;;
esac
