#!/usr/bin/env bash
# Usage: scripts/tools.sh uv|buf|grpcurl|jaeger
# Installs the named external tool at its pinned version into the cache (outside the repo) unless it is already there,
# and prints the absolute path of its binary as the only line on stdout. Progress goes to stderr.
set -euo pipefail
source "$(dirname "$0")/env.sh"

UV_VERSION=0.13.8  # the image uses the same one (UV_VERSION in .env)
GRPCURL_VERSION=v1.9.4
# Jaeger's Go module keeps v1 tags; module tag v1.75.0 is the Jaeger v2.12.0 release (v1.74.0 was v2.11.0, see its
# CHANGELOG): the newest release the Go module proxy here serves as approved.
JAEGER_MODULE_VERSION=v1.75.0
JAEGER_RELEASE=v2.12.0
# buf's version is pinned in scripts/tools/package.json and package-lock.json.
NPM_TOOLS_DIR="$K2_ROOT/scripts/tools"

# Project-owned Go caches, so installs work without a writable home Go setup and `rm -rf $K2_CACHE` resets everything.
export GOPATH="$K2_CACHE/go/path"
export GOMODCACHE="$K2_CACHE/go/mod"
export GOCACHE="$K2_CACHE/go/build"
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-modcacherw"

# A half-finished install's temporary path, removed if the script stops early.
staging=""
trap '[ -z "$staging" ] || rm -rf "$staging"' EXIT

log() { echo "tools.sh: $*" >&2; }

die() { log "error: $*"; exit 1; }

require_command() {
  command -v "$1" >/dev/null || die "'$1' is needed to install $2 but is not on PATH"
}

# Points the stable name $K2_BIN/<tool> at the versioned binary.
link_stable_name() {
  ln -sfn "$(basename "$2")" "$K2_BIN/$1"
}

install_uv() {
  local prefix="$K2_CACHE/uv-$UV_VERSION"
  if [ ! -x "$prefix/bin/uv" ]; then
    log "installing uv $UV_VERSION into $prefix"
    rm -rf "$prefix"
    python3 -m venv "$prefix" >&2
    "$prefix/bin/pip" install --quiet "uv==$UV_VERSION" >&2
  fi
  echo "$prefix/bin/uv"
}

install_buf() {
  require_command node buf
  require_command npm buf
  local version
  version=$(node -p 'require(process.argv[1]).packages["node_modules/@bufbuild/buf"].version' \
    "$NPM_TOOLS_DIR/package-lock.json")
  local prefix="$K2_CACHE/npm/buf-$version"
  local binary="$K2_BIN/buf-$version"
  if [ ! -x "$binary" ] || ! cmp -s "$NPM_TOOLS_DIR/package-lock.json" "$prefix/package-lock.json"; then
    log "installing buf $version from npm into $prefix"
    rm -rf "$prefix"
    mkdir -p "$prefix"
    cp "$NPM_TOOLS_DIR/package.json" "$NPM_TOOLS_DIR/package-lock.json" "$prefix/"
    # The package's postinstall only swaps its Node launcher for the native binary; we link the native binary ourselves.
    npm ci --prefix "$prefix" --ignore-scripts --no-audit --no-fund >&2
    # Exactly one platform package (@bufbuild/buf-<os>-<arch>) is installed: the one matching this machine.
    local native=("$prefix"/node_modules/@bufbuild/buf-*/bin/buf)
    if [ ${#native[@]} -ne 1 ] || [ ! -x "${native[0]}" ]; then
      die "no native buf binary for this platform under $prefix"
    fi
    "${native[0]}" --version >/dev/null || die "${native[0]} does not run"
    ln -sfn "${native[0]}" "$binary"
  fi
  link_stable_name buf "$binary"
  echo "$binary"
}

install_grpcurl() {
  require_command go grpcurl
  local binary="$K2_BIN/grpcurl-$GRPCURL_VERSION"
  if [ ! -x "$binary" ]; then
    log "building grpcurl $GRPCURL_VERSION with go install"
    staging=$(mktemp -d "$K2_BIN/.grpcurl.XXXXXX")
    GOBIN="$staging" go install -ldflags "-X main.version=$GRPCURL_VERSION" \
      "github.com/fullstorydev/grpcurl/cmd/grpcurl@$GRPCURL_VERSION" >&2
    mv "$staging/grpcurl" "$binary"
  fi
  link_stable_name grpcurl "$binary"
  echo "$binary"
}

install_jaeger() {
  require_command go jaeger
  local binary="$K2_BIN/jaeger-$JAEGER_MODULE_VERSION"
  if [ ! -x "$binary" ]; then
    # `go install cmd/jaeger@version` is refused because Jaeger's go.mod has a replace directive, so build the module
    # as the main module from its own go.mod/go.sum (the same dependency versions its release uses).
    log "downloading the Jaeger module $JAEGER_MODULE_VERSION"
    local source_dir
    source_dir=$(go mod download -json "github.com/jaegertracing/jaeger@$JAEGER_MODULE_VERSION" \
      | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
    [ -f "$source_dir/go.mod" ] || die "Jaeger module source not found after download (got '$source_dir')"
    log "building Jaeger $JAEGER_RELEASE all-in-one (cmd/jaeger); a cold build takes minutes"
    staging="$binary.partial.$$"
    (cd "$source_dir" && go build -o "$staging" \
      -ldflags "-X github.com/jaegertracing/jaeger/internal/version.latestVersion=$JAEGER_RELEASE" \
      ./cmd/jaeger) >&2
    mv "$staging" "$binary"
  fi
  link_stable_name jaeger "$binary"
  echo "$binary"
}

[ $# -eq 1 ] || die "usage: $0 uv|buf|grpcurl|jaeger"
tool=$1
case "$tool" in
  uv | buf | grpcurl | jaeger) ;;
  *) die "unknown tool '$tool' (expected uv, buf, grpcurl or jaeger)" ;;
esac

# One installer per tool at a time, so parallel callers (make up, tests) don't race on the same files.
exec 9>"$K2_CACHE/tools-$tool.lock"
flock 9
"install_$tool"
