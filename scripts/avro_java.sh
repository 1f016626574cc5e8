#!/usr/bin/env bash
# Apache Avro for Java, the reference implementation of Avro's resolution and compatibility rules, for the tests
# that check K2's schemas and messages with an Avro other than the services' fastavro. Fetches the jars once
# (Maven), compiles scripts/avro_java/AvroCheck.java once per content, then runs it with the arguments given.
#
# Usage: scripts/avro_java.sh fingerprint|compatibility|decode ARGS...   (the commands: AvroCheck.java)
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
SCRIPT=avro_java.sh
source "$K2_ROOT/scripts/java_server.sh"

SOURCES="$K2_ROOT/scripts/avro_java"
AVRO_VERSION=$(sed -n 's:.*<avro.version>\(.*\)</avro.version>.*:\1:p' "$SOURCES/pom.xml")
AVRO_HOME="$K2_CACHE/avro-java-$AVRO_VERSION"
LIBS="$AVRO_HOME/libs"
CLASSES="$AVRO_HOME/classes-$(cat "$SOURCES/pom.xml" "$SOURCES/AvroCheck.java" | sha256sum | cut -c1-16)"

# stdout is the tool's answer: the fetch's messages go to stderr.
maven_fetch "$SOURCES/pom.xml" "$LIBS" "Apache Avro $AVRO_VERSION for Java" >&2
if [[ ! -f $CLASSES/AvroCheck.class ]]; then
  (
    flock 9
    if [[ ! -f $CLASSES/AvroCheck.class ]]; then
      rm -rf "$CLASSES.partial"
      javac -d "$CLASSES.partial" -cp "$LIBS/*" "$SOURCES/AvroCheck.java" || die "javac failed"
      mv "$CLASSES.partial" "$CLASSES"
    fi
  ) 9>"$AVRO_HOME/compile.lock"
fi
exec java -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -cp "$CLASSES:$LIBS/*" AvroCheck "$@"
