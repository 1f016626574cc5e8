#!/usr/bin/env bash
# A local PostgreSQL server for the Iceberg SQL catalog (Debian's packages, installed if missing), on 127.0.0.1.
#
# Usage: scripts/postgres.sh up|down|status
#   up      install PostgreSQL if missing (apt-get), initdb a cluster once, start it, wait, create the database;
#           prints the catalog URI (K2_ICEBERG_CATALOG_URI) as its last line
#   down    stop it (fast shutdown)
#   status  exit 0 when running, 1 when not
#
# Environment:
#   K2_POSTGRES_DIR    cluster and logs, default $K2_RUN_DIR/postgres (run as root, the server runs as the
#                      `postgres` user, which must be able to reach this folder)
#   K2_POSTGRES_PORT   port; default: the one this cluster used before, else a free port
#   K2_POSTGRES_DB     database, default k2
#   K2_POSTGRES_USER   superuser of the cluster, default k2 (trust authentication, loopback only)
#   K2_POSTGRES_START_TIMEOUT  seconds `up` waits for the server, default 60
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

PG_DIR="${K2_POSTGRES_DIR:-$K2_RUN_DIR/postgres}"
DATA_DIR="$PG_DIR/data"
PORT_FILE="$PG_DIR/port"
LOG_FILE="$PG_DIR/postgres.log"
DB_NAME="${K2_POSTGRES_DB:-k2}"
DB_USER="${K2_POSTGRES_USER:-k2}"
START_TIMEOUT_SECONDS="${K2_POSTGRES_START_TIMEOUT:-60}"

die() {
  echo "postgres.sh: $*" >&2
  exit 1
}

pg_bin_dir() {
  local dir
  dir=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  [[ -n $dir && -x $dir/initdb ]] && echo "$dir"
}

ensure_installed() {
  pg_bin_dir >/dev/null && return 0
  echo "Installing PostgreSQL (Debian packages) ..."
  local sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || die "PostgreSQL is not installed and installing it needs root (apt-get install postgresql)"
    sudo=(sudo)
  fi
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq postgresql >/dev/null
  pg_bin_dir >/dev/null || die "apt-get installed postgresql but no initdb was found under /usr/lib/postgresql"
}

# The server refuses to run as root: as root, every server command runs as the `postgres` system user.
as_server_user() {
  if [[ $(id -u) -eq 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

choose_port() {
  if [[ -n ${K2_POSTGRES_PORT:-} ]]; then
    echo "$K2_POSTGRES_PORT"
  elif [[ -s $PORT_FILE ]]; then
    cat "$PORT_FILE"
  else
    free_port
  fi
}

running() {
  [[ -d $DATA_DIR ]] && as_server_user "$BIN/pg_ctl" -D "$DATA_DIR" status >/dev/null 2>&1
}

prepare_dir() {
  mkdir -p "$PG_DIR"
  touch "$LOG_FILE"
  if [[ $(id -u) -eq 0 ]]; then
    chown postgres: "$PG_DIR" "$LOG_FILE"
    runuser -u postgres -- test -w "$PG_DIR" \
      || die "the postgres user cannot write to $PG_DIR (a parent folder is not reachable by it); set K2_POSTGRES_DIR"
  fi
}

init_once() {
  [[ -f $DATA_DIR/PG_VERSION ]] && return 0
  echo "Initialising a PostgreSQL cluster in $DATA_DIR"
  as_server_user "$BIN/initdb" -D "$DATA_DIR" -U "$DB_USER" --auth=trust --encoding=UTF8 --no-locale >>"$LOG_FILE" 2>&1 \
    || { tail -n 20 "$LOG_FILE" >&2; die "initdb failed (log: $LOG_FILE)"; }
}

cmd_up() {
  ensure_installed
  BIN=$(pg_bin_dir)
  prepare_dir
  local port
  port=$(choose_port)
  if running; then
    port=$(cat "$PORT_FILE")
  else
    init_once
    echo "$port" >"$PORT_FILE"
    as_server_user "$BIN/pg_ctl" -D "$DATA_DIR" -l "$LOG_FILE" -w -t "$START_TIMEOUT_SECONDS" \
      -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories='$PG_DIR' -c fsync=on" start >/dev/null \
      || { tail -n 20 "$LOG_FILE" >&2; die "PostgreSQL did not start on 127.0.0.1:$port within ${START_TIMEOUT_SECONDS}s"; }
  fi
  local waited=0
  until "$BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -U "$DB_USER"; do
    ((waited++ < START_TIMEOUT_SECONDS * 10)) || die "PostgreSQL on 127.0.0.1:$port does not accept connections"
    sleep 0.1
  done
  if ! "$BIN/psql" -h 127.0.0.1 -p "$port" -U "$DB_USER" -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'" | grep -q 1; then
    "$BIN/createdb" -h 127.0.0.1 -p "$port" -U "$DB_USER" "$DB_NAME"
  fi
  echo "PostgreSQL serving on 127.0.0.1:$port, database $DB_NAME"
  echo "postgresql+psycopg2://$DB_USER@127.0.0.1:$port/$DB_NAME"
}

cmd_down() {
  BIN=$(pg_bin_dir) || {
    echo "PostgreSQL not installed"
    return 0
  }
  if running; then
    as_server_user "$BIN/pg_ctl" -D "$DATA_DIR" -m fast -w -t 60 stop >/dev/null
    echo "PostgreSQL stopped"
  else
    echo "PostgreSQL not running"
  fi
}

cmd_status() {
  BIN=$(pg_bin_dir) || {
    echo "PostgreSQL not installed"
    return 1
  }
  if running; then
    echo "PostgreSQL running on 127.0.0.1:$(cat "$PORT_FILE") ($DATA_DIR)"
  else
    echo "PostgreSQL not running"
    return 1
  fi
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) die "usage: scripts/postgres.sh up|down|status" ;;
esac
