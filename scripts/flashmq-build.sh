#!/usr/bin/env bash
# Finds or builds FlashMQ, a peer broker for scripts/bench-compare.sh, and prints the path of its
# binary on stdout (messages go to stderr). FlashMQ is in no package registry: it is built from a
# pinned release tag with its own CMake instructions (what its build.sh does: a Release build,
# -O3, in <source>/FlashMQBuildRelease). Its code is never copied into this repository.
#
#   scripts/flashmq-build.sh                 # prints e.g. ~/.cache/shardmq-bench/flashmq/v1.26.2/src/FlashMQBuildRelease/flashmq
#   FLASHMQ_SRC=/path/to/FlashMQ scripts/flashmq-build.sh --no-install
#
# Where the binary comes from, first match wins:
#   1. FLASHMQ_BIN=/path/to/flashmq (used as is)
#   2. `flashmq` on PATH
#   3. an earlier build of the tag in the cache directory
#   4. a build of the tag from FLASHMQ_SRC: either a source tree of that release (its
#      CMakeLists.txt must declare the tag's version) or a git repository, bare or not, that
#      has the tag (the tag is exported with `git archive` into the cache)
#   5. a build of the tag from `git clone https://github.com/halfgaar/FlashMQ` into the cache
# Exit status 1, with the reason on stderr, when none of these works.
#
# Flags and variables:
#   --tag TAG         release tag (default v1.26.2, the newest v1.26; or FLASHMQ_TAG)
#   --no-install      do not apt-get install the build dependencies (cmake g++ libssl-dev)
#   FLASHMQ_CACHE     cache directory (default ~/.cache/shardmq-bench/flashmq)
#   FLASHMQ_JOBS      parallel compile jobs (default CARGO_BUILD_JOBS, else nproc); the build
#                     runs under `nice -n 10`
set -euo pipefail

TAG="${FLASHMQ_TAG:-v1.26.2}"
INSTALL=1
CACHE="${FLASHMQ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/shardmq-bench/flashmq}"
REPO_URL="https://github.com/halfgaar/FlashMQ"
while [ $# -gt 0 ]; do
    case "$1" in
        --tag) TAG="$2"; shift ;;
        --no-install) INSTALL=0 ;;
        -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown flag: $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done

log() { echo "[flashmq-build] $*" >&2; }
VERSION="${TAG#v}"

if [ -n "${FLASHMQ_BIN:-}" ]; then
    [ -x "$FLASHMQ_BIN" ] || { log "FLASHMQ_BIN=$FLASHMQ_BIN is not an executable"; exit 1; }
    echo "$FLASHMQ_BIN"
    exit 0
fi
if command -v flashmq >/dev/null; then
    command -v flashmq
    exit 0
fi

SRC="$CACHE/$TAG/src"
BIN="$SRC/FlashMQBuildRelease/flashmq"
if [ -x "$BIN" ]; then
    echo "$BIN"
    exit 0
fi

# --- Source ------------------------------------------------------------------------------------
declares_version() { # dir: its CMakeLists.txt is the tag's release
    grep -Eq "project\(FlashMQ VERSION $VERSION[ )]" "$1/CMakeLists.txt" 2>/dev/null
}
fresh_src() { rm -rf "$SRC" && mkdir -p "$SRC"; }

if [ -n "${FLASHMQ_SRC:-}" ]; then
    if [ -f "$FLASHMQ_SRC/CMakeLists.txt" ] && ! git -C "$FLASHMQ_SRC" rev-parse --git-dir >/dev/null 2>&1; then
        # A plain source tree: build it where it is, if it is the pinned release.
        if ! declares_version "$FLASHMQ_SRC"; then
            log "FLASHMQ_SRC=$FLASHMQ_SRC is not FlashMQ $VERSION (CMakeLists.txt declares another version)"
            exit 1
        fi
        SRC="$FLASHMQ_SRC"
        BIN="$SRC/FlashMQBuildRelease/flashmq"
    elif git -C "$FLASHMQ_SRC" rev-parse --verify -q "refs/tags/$TAG" >/dev/null; then
        log "exporting $TAG from $FLASHMQ_SRC into $SRC"
        fresh_src
        git -C "$FLASHMQ_SRC" archive --format=tar "$TAG" | tar -x -C "$SRC"
    else
        log "FLASHMQ_SRC=$FLASHMQ_SRC is neither a FlashMQ source tree nor a git repository with tag $TAG"
        exit 1
    fi
elif ! declares_version "$SRC"; then
    command -v git >/dev/null || { log "git is missing: cannot clone $REPO_URL"; exit 1; }
    log "cloning $REPO_URL at $TAG into $SRC"
    fresh_src
    if ! timeout 300 git -c advice.detachedHead=false clone -q --depth 1 --branch "$TAG" "$REPO_URL" "$SRC"; then
        rm -rf "$SRC"
        log "cannot clone $REPO_URL (no network?): set FLASHMQ_SRC to a FlashMQ checkout or put flashmq on PATH"
        exit 1
    fi
fi
if [ -x "$BIN" ]; then
    echo "$BIN"
    exit 0
fi

# --- Build dependencies ------------------------------------------------------------------------
missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v g++ >/dev/null || missing+=(g++)
{ [ -f /usr/include/openssl/ssl.h ] || dpkg -s libssl-dev >/dev/null 2>&1; } || missing+=(libssl-dev)
command -v make >/dev/null || missing+=(make)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$INSTALL" = 0 ]; then
        log "missing build dependencies: ${missing[*]} (and --no-install)"
        exit 1
    fi
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    log "installing ${missing[*]} (apt-get)"
    if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
        log "cannot install ${missing[*]}"
        exit 1
    fi
fi

# --- Build (what build.sh does, without man pages and packaging) -------------------------------
JOBS="${FLASHMQ_JOBS:-${CARGO_BUILD_JOBS:-$(nproc)}}"
BUILD="$SRC/FlashMQBuildRelease"
mkdir -p "$BUILD"
log "building FlashMQ $TAG (Release, $JOBS job(s)) in $BUILD; a few minutes"
if ! (cd "$BUILD" && nice -n 10 cmake -DCMAKE_BUILD_TYPE=Release .. >cmake.log 2>&1 \
        && nice -n 10 make -j "$JOBS" flashmq >make.log 2>&1); then
    log "the build failed; the end of its log:"
    tail -n 20 "$BUILD/make.log" "$BUILD/cmake.log" >&2 2>/dev/null || true
    exit 1
fi
if ! "$BIN" --version 2>/dev/null | grep -q "$VERSION"; then
    log "$BIN does not report version $VERSION"
    exit 1
fi
echo "$BIN"
