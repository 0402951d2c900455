#!/usr/bin/env bash
# quorum serve against qemu-storage-daemon's NBD export of a QEMU quorum
# node, both driven by fio's nbd ioengine (libnbd): issue 11's goals.
#
#   scripts/bench-nbd-vs-qemu.sh [DIR]
#
# Creates, in DIR (default: $DIR, else a temporary directory removed at the
# end; a DIR given is kept, with every run's fio JSON in DIR/runs and every
# server's log in DIR/logs), r0.img r1.img r2.img: SIZE bytes of the same
# random data (scripts/lib.sh says how they are made, and
# why). Every server runs over these three files with threshold 2 and the
# page cache (QEMU's default cache mode, writeback; `quorum serve`'s
# buffered I/O), exported on a unix socket in DIR:
#
#   quorum     `quorum serve --listen unix:SOCK --threshold 2 r0 r1 r2`
#   threads    qemu-storage-daemon, a `driver: quorum` node, vote-threshold 2,
#              three `driver: raw` children over `driver: file`, `aio: threads`
#   io_uring   the same with `aio: io_uring` (skipped, and said so, when
#              QEMU cannot use io_uring here: QEMU's figure is then threads')
#
# For each case, REPEAT times, alternating threads / io_uring / quorum: a
# fresh server, one fio run (`--ioengine=nbd --uri=nbd+unix:///...`, every
# job its own connection) of WARMUP untimed seconds (`--ramp_time`) and
# RUNTIME timed seconds, the server stopped. Each figure is the median of
# the REPEAT runs: IOPS (reads and writes together) and the p99 completion
# latency (fio's clat, reads and writes together: `unified_rw_reporting=
# mixed`). QEMU's figure is its aio mode with more IOPS (the table says
# which); ratio = quorum IOPS / QEMU's. Goals, per case: ratio >= 2, and
# quorum's p99 <= the p99 of QEMU's better mode. The cases that write run
# last (they change the data, on all three replicas alike).
#
# Then, for information (no goal), fio's own ceiling on this machine: the
# 4k random read depth 32 case against `nbdkit memory SIZE` (a server that
# does almost nothing), when nbdkit is installed.
#
# Exit status 0 only if every goal is met; the last line says which were
# missed. Every command is printed before its case, each run's figures as
# it completes, the table at the end.
#
# Environment: SIZE (default 256M), REPEAT (3), RUNTIME (timed seconds per
# run, 10), WARMUP (untimed seconds before, 2), QUORUM (default
# target/release/quorum, built if missing), FIO (fio), QSD
# (qemu-storage-daemon), NBDKIT (nbdkit; CEILING=0 skips that run), DIR,
# RETRIES (tries of a run that fails, 2), START_TIMEOUT (seconds for a
# server to listen, 20), STOP_TIMEOUT (seconds for it to exit before
# SIGKILL, 10). A fio run is killed after WARMUP + RUNTIME + 60 s.
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=bench-nbd-vs-qemu
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

SIZE=${SIZE:-256M}
REPEAT=${REPEAT:-3}
RUNTIME=${RUNTIME:-10}
WARMUP=${WARMUP:-2}
QUORUM=${QUORUM:-target/release/quorum}
FIO=${FIO:-fio}
QSD=${QSD:-qemu-storage-daemon}
NBDKIT=${NBDKIT:-nbdkit}
CEILING=${CEILING:-1}
RETRIES=${RETRIES:-2}
START_TIMEOUT=${START_TIMEOUT:-20}
STOP_TIMEOUT=${STOP_TIMEOUT:-10}
FIO_TIMEOUT=$((WARMUP + RUNTIME + 60))

command -v "$FIO" >/dev/null || die "$FIO not found (Debian: apt-get install fio)"
command -v "$QSD" >/dev/null || die "$QSD not found (Debian: apt-get install qemu-utils)"
command -v python3 >/dev/null || die "python3 not found (it reads fio's JSON)"
"$FIO" --enghelp=nbd >/dev/null 2>&1 || die "$FIO has no nbd ioengine (Debian's fio has; it needs libnbd)"
if [ ! -x "$QUORUM" ]; then
    echo "# building $QUORUM" >&2
    cargo build --release --bin quorum >&2
fi
"$QUORUM" serve --help >/dev/null 2>&1 || die "$QUORUM has no serve command"

# Everything this script starts, for the EXIT trap.
PIDS=()
TMPDIR_OWNED=""
cleanup() {
    local p
    for p in "${PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]}"; do
        stop_pid "$p" || true
    done
    if [ -n "${DIR:-}" ]; then rm -f "$DIR"/*.sock; fi
    if [ -n "$TMPDIR_OWNED" ]; then rm -rf "$TMPDIR_OWNED"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ $# -ge 1 ]; then DIR=$1; fi
if [ -n "${DIR:-}" ]; then
    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd)
else
    DIR=$(mktemp -d)
    TMPDIR_OWNED=$DIR
fi
case $DIR in
*,* | *\"* | *\\* | *\?* | *' '*) die "DIR may not contain a comma, a quote, a backslash, '?' or a space (QEMU's option syntax, NBD URIs)" ;;
esac
# A unix socket path is limited to 107 bytes.
[ ${#DIR} -le 80 ] || die "DIR is too long for a unix socket path: $DIR"
mkdir -p "$DIR/runs" "$DIR/logs"

bytes=$(numfmt --from=iec "$SIZE")
make_image "$DIR/r0.img" "$bytes"
copy_image "$DIR/r0.img" "$DIR/r1.img"
copy_image "$DIR/r0.img" "$DIR/r2.img"
FILES=("$DIR/r0.img" "$DIR/r1.img" "$DIR/r2.img")

# QEMU's quorum node over the three files, as --blockdev JSON.
qsd_blockdev() { # AIO
    local aio=$1 i=0 f c=""
    for f in "${FILES[@]}"; do
        [ -z "$c" ] || c+=", "
        c+="{\"driver\": \"raw\", \"node-name\": \"child$i\", \"file\": {\"driver\": \"file\", \"filename\": \"$f\", \"aio\": \"$aio\"}}"
        i=$((i + 1))
    done
    printf '{"driver": "quorum", "node-name": "quorum0", "vote-threshold": 2, "children": [%s]}' "$c"
}

# SERVER (quorum|threads|io_uring|nbdkit): its socket, command and URI.
sock_of() { printf '%s/%s.sock' "$DIR" "$1"; }
server_cmd() { # SERVER -> sets CMD
    local sock
    sock=$(sock_of "$1")
    case $1 in
    quorum) CMD=("$QUORUM" serve --listen "unix:$sock" --threshold 2 "${FILES[@]}") ;;
    threads | io_uring)
        CMD=("$QSD" --blockdev "$(qsd_blockdev "$1")"
            --nbd-server "addr.type=unix,addr.path=$sock"
            --export "type=nbd,id=export0,node-name=quorum0,writable=on") ;;
    nbdkit) CMD=("$NBDKIT" -f -U "$sock" memory "$SIZE") ;;
    esac
}
uri_of() { # SERVER
    case $1 in
    threads | io_uring) printf 'nbd+unix:///quorum0?socket=%s' "$(sock_of "$1")" ;;
    *) printf 'nbd+unix:///?socket=%s' "$(sock_of "$1")" ;;
    esac
}

# Starts SERVER in the background, its output to LOG; sets SERVER_PID.
# Ready when its socket exists (and, for quorum serve, which binds before
# it listens, when it has said "listening on"). Fails if it exits first or
# is not ready within START_TIMEOUT s.
start_server() { # SERVER LOG
    local server=$1 log=$2 sock i=0
    sock=$(sock_of "$server")
    rm -f "$sock"
    server_cmd "$server"
    "${CMD[@]}" >"$log" 2>&1 </dev/null &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    while :; do
        if [ -S "$sock" ] && { [ "$server" != quorum ] || grep -q 'listening on' "$log"; }; then
            return 0
        fi
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            wait "$SERVER_PID" 2>/dev/null || true
            forget_pid "$SERVER_PID"
            echo "bench-nbd-vs-qemu: $server exited before listening: $(tail -n 3 "$log")" >&2
            return 1
        fi
        if [ "$i" -ge $((START_TIMEOUT * 10)) ]; then
            echo "bench-nbd-vs-qemu: $server not listening after ${START_TIMEOUT}s" >&2
            stop_server "$SERVER_PID" "$server"
            return 1
        fi
        sleep 0.1
        i=$((i + 1))
    done
}

stop_server() { # PID SERVER
    kill "$1" 2>/dev/null || true
    stop_pid "$1"
    forget_pid "$1"
    rm -f "$(sock_of "$2")"
}

# fio's options for a case (without --uri), from its spec "RW BS DEPTH JOBS".
fio_args() { # RW BS DEPTH JOBS
    printf '%s\n' --ioengine=nbd "--rw=$1" "--bs=$2" "--iodepth=$3" "--numjobs=$4" \
        --group_reporting --unified_rw_reporting=mixed --norandommap \
        --time_based "--ramp_time=$WARMUP" "--runtime=$RUNTIME" --output-format=json
    if [ "$1" = randrw ]; then printf '%s\n' --rwmixread=50; fi
}

# "IOPS P99_US" from a fio JSON output file, or "ERR ERR".
parse_fio() { # FILE
    python3 - "$1" <<'EOF' 2>/dev/null || echo "ERR ERR"
import json, sys
text = open(sys.argv[1]).read()
# Anything an engine prints before the JSON (fio's nbd engine says
# "fio: connected to NBD server" on some versions) is skipped.
data = json.loads(text[text.index("{"):])
jobs = data["jobs"]
assert len(jobs) == 1, "group_reporting gives one job"
job = jobs[0]
assert job["error"] == 0, "fio job error %s" % job["error"]
m = job["mixed"]
assert m["total_ios"] > 0, "no I/O"
p99 = m["clat_ns"]["percentile"]["99.000000"] / 1000.0
print("%.0f %.1f" % (m["iops"], p99))
EOF
}

# One run: a fresh SERVER, fio with ARGS against it, the server stopped.
# Sets FIG to "IOPS P99_US", or "ERR ERR" after RETRIES failed tries (each
# said on stderr, with the server's and fio's last lines). Runs in this
# shell, never in $(...), so that the EXIT trap knows every process; fio
# runs in the background and is waited for, so that a signal is handled at
# once.
run_one() { # SERVER TAG ARGS...
    local server=$1 tag=$2 try=1 out log rc fig pid fio_pid
    shift 2
    while :; do
        out="$DIR/runs/$tag-$server.json"
        log="$DIR/logs/$tag-$server.log"
        rc=0
        if start_server "$server" "$log"; then
            pid=$SERVER_PID
            timeout "$FIO_TIMEOUT" "$FIO" --name="$tag" "$@" --uri="$(uri_of "$server")" \
                --output="$out" >"$DIR/logs/$tag-$server.fio.log" 2>&1 </dev/null &
            fio_pid=$!
            PIDS+=("$fio_pid")
            wait "$fio_pid" || rc=$?
            forget_pid "$fio_pid"
            stop_server "$pid" "$server"
        else
            rc=1
        fi
        fig=ERR
        if [ "$rc" -eq 0 ]; then fig=$(parse_fio "$out"); fi
        if [ "$fig" != "ERR ERR" ] && [ "$fig" != ERR ]; then
            FIG=$fig
            return
        fi
        printf 'bench-nbd-vs-qemu: %s run %s failed (status %s, try %s of %s): %s | %s\n' \
            "$server" "$tag" "$rc" "$try" "$RETRIES" \
            "$(tail -n 2 "$DIR/logs/$tag-$server.fio.log" 2>/dev/null | tr '\n' ' ')" \
            "$(tail -n 2 "$log" 2>/dev/null | tr '\n' ' ')" >&2
        if [ "$try" -ge "$RETRIES" ]; then
            FIG="ERR ERR"
            return
        fi
        try=$((try + 1))
    done
}

# 1 if VALUE OP GOAL (OP: ge, le), else 0 (also when VALUE or GOAL is missing).
holds() { # VALUE OP GOAL
    awk -v v="$1" -v op="$2" -v g="$3" 'BEGIN {
        if (v == "-" || v == "ERR" || g == "-" || g == "ERR") { print 0; exit }
        print ((op == "ge") ? (v >= g) : (v <= g)) + 0 }'
}

# Thousands separated by a thin space, for the table.
num() { awk -v v="$1" 'BEGIN { if (v == "-" || v == "ERR") { print v; exit }
    s = sprintf("%.0f", v); o = ""; while (length(s) > 3) { o = " " substr(s, length(s) - 2) o; s = substr(s, 1, length(s) - 3) }
    print s o }'; }

MISSES=()
miss() { MISSES+=("$1"); }

echo "# bench-nbd-vs-qemu $(date -u +%FT%TZ)"
echo "# machine: $(nproc) cores (nproc), load average $(cut -d' ' -f1-3 /proc/loadavg), kernel $(uname -sr), $(awk '/MemTotal/ { printf "%d MiB RAM", $2 / 1024 }' /proc/meminfo)"
echo "# fio: $("$FIO" --version) (nbd ioengine, libnbd $(dpkg-query -W -f='${Version}' libnbd0 2>/dev/null || echo '?'))"
echo "# qemu-storage-daemon: $("$QSD" --version | head -n 1)"
echo "# quorum: $QUORUM (commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD 2>/dev/null || echo ', uncommitted changes in the tree'); binary built $(date -u -r "$QUORUM" +%FT%TZ), sha256 $(sha256sum "$QUORUM" | cut -c1-12))"
echo "# replicas: 3 x $SIZE of the same random data in $DIR; threshold 2; page cache (writeback); unix sockets"
echo "# each run: a fresh server, fio ${WARMUP}s untimed (--ramp_time) + ${RUNTIME}s timed; each figure: median of $REPEAT runs, servers alternating"

# Can QEMU use io_uring here? A short read through an aio=io_uring node.
probe_args=()
while IFS= read -r a; do probe_args+=("$a"); done < <(RUNTIME=1 WARMUP=0 fio_args randread 4k 1 1)
for s in quorum threads; do
    run_one "$s" probe "${probe_args[@]}"
    [ "$FIG" != "ERR ERR" ] || die "$s does not serve (see $DIR/logs/probe-$s.log; give DIR to keep it)"
done
URING=yes
run_one io_uring probe "${probe_args[@]}" 2>/dev/null
if [ "$FIG" = "ERR ERR" ]; then
    URING=no
    echo "# io_uring: SKIPPED, QEMU cannot use aio=io_uring here: $(tail -n 1 "$DIR/logs/probe-io_uring.log" 2>/dev/null); QEMU's figure is aio=threads only"
else
    echo "# io_uring: available; QEMU's figure is the better of aio=threads and aio=io_uring"
fi
SERVERS=(threads)
if [ "$URING" = yes ]; then SERVERS+=(io_uring); fi
SERVERS+=(quorum)

ROWS=()

# One case: NAME TAG RW BS DEPTH JOBS
bench_case() {
    local name=$1 tag=$2
    shift 2
    local -a args=()
    local a s r
    while IFS= read -r a; do args+=("$a"); done < <(fio_args "$@")
    echo
    echo "## $name"
    for s in "${SERVERS[@]}"; do
        server_cmd "$s"
        show "${CMD[@]}"
        show "$FIO" --name="$tag" "${args[@]}" --uri="$(uri_of "$s")" --output="$DIR/runs/$tag-N-$s.json"
    done
    local -A iops=() p99=()
    local fig
    for r in $(seq "$REPEAT"); do
        local line="run $r:"
        for s in "${SERVERS[@]}"; do
            run_one "$s" "$tag-$r" "${args[@]}"
            fig=$FIG
            iops[$s]+="${fig% *} "
            p99[$s]+="${fig#* } "
            line+=" $s $(num "${fig% *}") IOPS p99 ${fig#* } us;"
        done
        echo "${line%;}"
    done
    local -A mi=() mp=()
    for s in threads io_uring quorum; do
        # shellcheck disable=SC2086 # word lists of numbers
        if [ -n "${iops[$s]:-}" ]; then
            mi[$s]=$(median ${iops[$s]})
            mp[$s]=$(median ${p99[$s]})
        else
            mi[$s]=-
            mp[$s]=-
        fi
    done
    # QEMU's better mode: more IOPS (a failed mode does not count).
    local best=threads
    if [ "$URING" = yes ] && [ "${mi[io_uring]}" != ERR ] &&
        { [ "${mi[threads]}" = ERR ] || [ "$(holds "${mi[io_uring]}" ge "${mi[threads]}")" = 1 ]; }; then
        best=io_uring
    fi
    local rt pass_iops pass_p99 result
    rt=$(ratio "${mi[quorum]}" "${mi[$best]}")
    pass_iops=$(holds "$rt" ge 2)
    pass_p99=$(holds "${mp[quorum]}" le "${mp[$best]}")
    result=PASS
    if [ "$pass_iops" = 0 ] && [ "$pass_p99" = 0 ]; then
        result="FAIL (IOPS, p99)"
    elif [ "$pass_iops" = 0 ]; then
        result="FAIL (IOPS)"
    elif [ "$pass_p99" = 0 ]; then
        result="FAIL (p99)"
    fi
    [ "$pass_iops" = 1 ] || miss "$name: quorum ${mi[quorum]} IOPS = ${rt}x QEMU's ${mi[$best]} (aio=$best) (goal >= 2x)"
    [ "$pass_p99" = 1 ] || miss "$name: quorum p99 ${mp[quorum]} us > QEMU's ${mp[$best]} us (aio=$best)"
    local uring_col
    if [ "$URING" = yes ]; then uring_col=$(num "${mi[io_uring]}"); else uring_col=skipped; fi
    ROWS+=("| $name | $(num "${mi[threads]}") | $uring_col | $(num "${mi[quorum]}") | ${rt}× | ${mp[$best]} µs ($best) | ${mp[quorum]} µs | $result |")
}

bench_case "4 KiB random read, depth 1" read4k-d1 randread 4k 1 1
bench_case "4 KiB random read, depth 32, one connection" read4k-d32 randread 4k 32 1
bench_case "4 KiB random read, depth 8, four connections" read4k-d8x4 randread 4k 8 4
bench_case "64 KiB random read, depth 8" read64k-d8 randread 64k 8 1
# Last: the cases that write (all three replicas alike, so reads still agree).
bench_case "4 KiB random write, depth 32" write4k-d32 randwrite 4k 32 1
bench_case "4 KiB random read/write, depth 16" rw4k-d16 randrw 4k 16 1

CEIL=""
if [ "$CEILING" = 1 ] && command -v "$NBDKIT" >/dev/null 2>&1; then
    echo
    echo "## fio's own ceiling: 4 KiB random read, depth 32, one connection, against nbdkit memory $SIZE (no goal)"
    server_cmd nbdkit
    show "${CMD[@]}"
    cargs=()
    while IFS= read -r a; do cargs+=("$a"); done < <(fio_args randread 4k 32 1)
    show "$FIO" --name=ceiling "${cargs[@]}" --uri="$(uri_of nbdkit)" --output="$DIR/runs/ceiling-nbdkit.json"
    run_one nbdkit ceiling "${cargs[@]}"
    fig=$FIG
    CEIL="fio against \`nbdkit memory $SIZE\` ($("$NBDKIT" --version | head -n 1)), 4 KiB random read, depth 32, one connection, one run: $(num "${fig% *}") IOPS, p99 ${fig#* } µs"
    echo "$CEIL"
fi

echo
echo "# results (median of $REPEAT runs of ${RUNTIME}s; IOPS = reads + writes; p99 = fio's completion latency; QEMU = its aio mode with more IOPS; ratio = quorum / QEMU)"
if [ "$URING" = no ]; then echo "# io_uring was SKIPPED (unavailable to QEMU here): QEMU's figure is aio=threads"; fi
echo
echo "| case | QEMU threads IOPS | QEMU io_uring IOPS | quorum IOPS | ratio | p99 QEMU | p99 quorum | result |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
printf '%s\n' "${ROWS[@]}"
echo
echo "goals per case: quorum IOPS >= 2x QEMU's, quorum p99 <= QEMU's (same mode)"
if [ -n "$CEIL" ]; then echo "client ceiling: $CEIL"; fi
echo "# load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ ${#MISSES[@]} -eq 0 ]; then
    echo "all goals met"
else
    echo "goals missed (${#MISSES[@]}):"
    printf '  %s\n' "${MISSES[@]}"
    exit 1
fi
