# Sourced by the scripts that run a Java server from what they fetch through Maven (kafka.sh, s3.sh, registry.sh):
# the fetch, process and port checks, a bounded stop. avro_java.sh uses its jar fetch. The sourcing script sets
# SCRIPT (its name, for messages), LOG_FILE and STOP_TIMEOUT_SECONDS.

die() {
  echo "$SCRIPT: $*" >&2
  exit 1
}

# maven_fetch POM DEST LABEL [AFTER...]: copies the POM's runtime dependencies into the folder DEST, once per POM
# content (DEST.complete holds its hash); AFTER, a command, runs after a fresh fetch under the same lock.
maven_fetch() {
  local pom=$1 dest=$2 label=$3
  shift 3
  local marker="$dest.complete" pom_hash
  pom_hash=$(sha256sum "$pom" | cut -d' ' -f1)
  if [[ -f $marker && $(<"$marker") == "$pom_hash" ]]; then
    return 0
  fi
  mkdir -p "$(dirname "$dest")"
  (
    flock 9
    if [[ -f $marker && $(<"$marker") == "$pom_hash" ]]; then
      exit 0
    fi
    echo "Fetching $label with Maven into $dest ..."
    local staging="$dest.partial"
    rm -rf "$staging"
    # Maven's output is kept for failures only (on success Debian's Maven prints nothing but colour codes).
    local maven_log="$dest.maven.log"
    if ! mvn -q -B -f "$pom" -Dmaven.repo.local="$K2_CACHE/m2" \
      dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$staging" >"$maven_log" 2>&1; then
      cat "$maven_log" >&2
      die "Maven could not fetch $label (output above, also in $maven_log)"
    fi
    rm -rf "$dest"
    mv "$staging" "$dest"
    if (($# > 0)); then
      "$@"
    fi
    echo "$pom_hash" >"$marker"
  ) 9>"$dest.lock"
}

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

process_running() {
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ $state != Z ]]
}

# server_pid PID_FILE COMMAND_LINE_PART: prints the pid in PID_FILE if that process is alive (not a zombie) and
# its command line still contains COMMAND_LINE_PART (a recycled pid is not ours).
server_pid() {
  [[ -f $1 ]] || return 1
  local pid
  pid=$(<"$1")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  process_running "$pid" || return 1
  [[ $(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") == *"$2"* ]] || return 1
  echo "$pid"
}

show_log_tail() {
  echo "---- last 40 lines of $LOG_FILE ----" >&2
  tail -n 40 "$LOG_FILE" >&2 || true
  echo "----" >&2
}

# stop_pid PID LABEL: SIGTERM (and SIGCONT, should it be stopped), then SIGKILL after STOP_TIMEOUT_SECONDS; fails
# when it had to kill.
stop_pid() {
  local pid=$1 label=$2
  kill -TERM "$pid" 2>/dev/null || true
  kill -CONT "$pid" 2>/dev/null || true
  local waited=0
  while process_running "$pid" && ((waited < STOP_TIMEOUT_SECONDS * 10)); do
    sleep 0.1
    waited=$((waited + 1))
  done
  if process_running "$pid"; then
    echo "$label (pid $pid) did not stop within ${STOP_TIMEOUT_SECONDS}s; sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
    while process_running "$pid"; do sleep 0.1; done
    return 1
  fi
}
