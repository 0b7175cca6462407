#!/usr/bin/env bash
# Kernel settings and process limits for million-connection MQTT loads (broker and harness on
# one machine, over loopback). Prints each setting with its current value, the recommended one
# and why; with --apply, applies them (root needed; sysctls last until reboot, the limits file
# applies to new login sessions, and the calling shell's open-file limit is raised with prlimit).
#
#   scripts/tune-linux.sh            # show
#   sudo scripts/tune-linux.sh --apply
set -uo pipefail

APPLY=0
CONNECTIONS=1000000
while [ $# -gt 0 ]; do
    case "$1" in
        --apply) APPLY=1 ;;
        --connections) CONNECTIONS="$2"; shift ;;
        -h|--help)
            sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
            echo "  --connections N   size the limits for N connections (default 1000000)"
            exit 0 ;;
        *) echo "unknown flag: $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done

# Both ends of every connection are on this machine: 2 sockets per connection, plus headroom.
FILES=$(( CONNECTIONS * 2 + 100000 ))
[ "$FILES" -lt 1048576 ] && FILES=1048576
NOFILE=$(( CONNECTIONS + 50000 ))
[ "$NOFILE" -lt 65536 ] && NOFILE=65536
# TCP memory in 4 KiB pages: min / pressure / max. ~4 KiB per idle socket pair end on average.
PAGES=$(( CONNECTIONS * 2 ))
[ "$PAGES" -lt 786432 ] && PAGES=786432

failures=0
applied=0

# name | mode | recommended | reason. Mode "min": at least this (every field), a larger current
# value is kept; "set": exactly this.
SYSCTLS=(
    "fs.file-max|min|$FILES|system-wide open files: every connection is a socket at each end"
    "fs.nr_open|min|$FILES|per-process ceiling for RLIMIT_NOFILE; nofile cannot be raised above it"
    "net.core.somaxconn|min|65535|caps every listen() backlog; a connection storm overflows 4096 and SYNs get retried a second later"
    "net.ipv4.tcp_max_syn_backlog|min|65535|half-open connections the kernel keeps during a storm before dropping SYNs"
    "net.ipv4.ip_local_port_range|set|1024 65535|ephemeral ports per (source, destination) pair: ~64k instead of ~28k, so fewer 127.0.0.x source addresses"
    "net.ipv4.tcp_tw_reuse|min|1|reuse TIME_WAIT ports for new outgoing connections between back-to-back runs (2 = loopback only is enough here)"
    "net.core.netdev_max_backlog|min|65536|packets queued per CPU before processing; loopback bursts of a million clients overflow 1000"
    "net.ipv4.tcp_mem|min|$PAGES $(( PAGES * 3 / 2 )) $(( PAGES * 2 ))|total TCP buffer memory (pages): the defaults put a million sockets under memory pressure"
    "net.ipv4.tcp_rmem|set|4096 16384 4194304|per-socket receive buffer: 16 KiB default keeps idle sockets small, autotuning still grows busy ones to 4 MiB"
    "net.ipv4.tcp_wmem|set|4096 16384 4194304|per-socket send buffer: same reasoning as tcp_rmem"
    "net.netfilter.nf_conntrack_max|min|$FILES|only if conntrack is loaded: a full table drops new connections silently"
)

# satisfied MODE CURRENT WANT: whether CURRENT already meets WANT.
satisfied() {
    local mode=$1 current=$2 want=$3
    if [ "$mode" = set ]; then
        [ "$current" = "$want" ]
        return
    fi
    local -a c w
    read -r -a c <<<"$current"
    read -r -a w <<<"$want"
    local i
    for i in "${!w[@]}"; do
        [ "${c[$i]:-0}" -ge "${w[$i]}" ] || return 1
    done
}

printf '%-34s %-28s %-28s %-7s %s\n' "setting" "current" "recommended" "status" "why"
for entry in "${SYSCTLS[@]}"; do
    IFS='|' read -r key mode want why <<<"$entry"
    path="/proc/sys/${key//.//}"
    if [ ! -e "$path" ]; then
        printf '%-34s %-28s %-28s %-7s %s\n' "$key" "(absent)" "$want" "-" "$why"
        continue
    fi
    current=$(tr -s '\t ' ' ' <"$path")
    status=ok
    satisfied "$mode" "$current" "$want" || status=change
    printf '%-34s %-28s %-28s %-7s %s\n' "$key" "$current" "$want" "$status" "$why"
    if [ "$APPLY" = 1 ] && [ "$status" = change ]; then
        if sysctl -q -w "$key=$want" >/dev/null 2>&1; then
            applied=$((applied + 1))
        else
            echo "  ! could not set $key (read-only in this container, or not root)" >&2
            failures=$((failures + 1))
        fi
    fi
done

# Process limits.
nofile_soft=$(ulimit -Sn)
nofile_hard=$(ulimit -Hn)
memlock=$(ulimit -Sl)
nofile_status=change
[ "$nofile_hard" = unlimited ] || [ "$nofile_hard" -ge "$NOFILE" ] && nofile_status=ok
memlock_status=change
[ "$memlock" = unlimited ] && memlock_status=ok
printf '%-34s %-28s %-28s %-7s %s\n' "nofile (ulimit -n)" "$nofile_soft / $nofile_hard" "$NOFILE" "$nofile_status" \
    "open files per process: one per connection (bench-harness --workers splits clients over processes)"
printf '%-34s %-28s %-28s %-7s %s\n' "memlock (ulimit -l)" "$memlock" "unlimited" "$memlock_status" \
    "io_uring rings and registered buffers of the shardmq broker are locked memory"

if [ "$APPLY" = 1 ]; then
    limits=/etc/security/limits.d/99-mqtt-bench.conf
    if { printf '*\tsoft\tnofile\t%s\n*\thard\tnofile\t%s\nroot\tsoft\tnofile\t%s\nroot\thard\tnofile\t%s\n' \
            "$NOFILE" "$NOFILE" "$NOFILE" "$NOFILE"
         printf '*\tsoft\tmemlock\tunlimited\n*\thard\tmemlock\tunlimited\n'; } >"$limits" 2>/dev/null; then
        echo "wrote $limits (new login sessions)"
        applied=$((applied + 1))
    else
        echo "  ! could not write $limits (not root?)" >&2
        failures=$((failures + 1))
    fi
    # The shell that called us: raise its limits now, if prlimit and permissions allow.
    if command -v prlimit >/dev/null 2>&1; then
        if prlimit --pid "$PPID" --nofile="$NOFILE:$NOFILE" 2>/dev/null \
            && prlimit --pid "$PPID" --memlock=unlimited:unlimited 2>/dev/null; then
            echo "raised nofile to $NOFILE and memlock to unlimited for the calling shell (pid $PPID)"
        else
            echo "  ! prlimit could not raise the calling shell's limits (fs.nr_open too low, or not root)" >&2
            failures=$((failures + 1))
        fi
    fi
    echo "applied $applied setting(s), $failures failure(s)"
    [ "$failures" -eq 0 ] || exit 1
else
    echo
    echo "Nothing changed. Run with --apply (as root) to apply; sysctls last until reboot."
fi
