#!/usr/bin/env bash
# quorum bench against qemu-img bench on the same raw replicas: issue 6's goals.
#
#   scripts/bench-vs-qemu.sh [DIR]
#
# Creates, in DIR (default: a temporary directory, removed at the end),
# r0.img r1.img r2.img: SIZE bytes of the same random data, and d2.img:
# SIZE bytes of other random data (scripts/lib.sh says how they
# are made) (replica 2 of the "one replica differs
# everywhere" case). Builds target/release/quorum if it is missing or lacks
# `bench --driver`. Then:
#
#  1. For each case, REPEAT times, alternating, on the same files: qemu-img
#     bench over driver=quorum,vote-threshold=2 with aio=threads children,
#     the same with aio=io_uring children (skipped, and said so, when QEMU
#     cannot use io_uring here), `quorum bench` (blocking driver) and
#     `quorum bench --driver tokio`, all with threshold 2 and the default
#     cache mode (writeback). Each figure is the MEDIAN of the REPEAT runs'
#     "Run completed in" seconds. Every timed run follows WARMUP untimed
#     runs of the same command (default 1), so that each tool is measured
#     in its own steady state, not in the state the other tool left the
#     page cache in (a write run straight after QEMU's io_uring writes costs
#     `quorum bench` about 0.7 us a request more; QEMU gains nothing from
#     following us). WARMUP=0 gives the plain alternation. QEMU's figure
#     is the faster of its two aio modes; ratio = QEMU seconds / ours. Goals: read 4k d1 >= 2.5, read 4k
#     d32 >= 2, read 64k d8 >= 1.5, write 4k d1 >= 5, read 64k d8 with
#     replica 2 differing everywhere >= 5 (blocking driver); the tokio driver
#     > 1 in every case. The write case runs last (it overwrites the data
#     with zeroes, on all three replicas alike).
#  2. `quorum bench --driver preads` (three plain back-to-back preads per
#     request, no quorum) against `quorum bench`, 4k reads at depth 1: the
#     quorum's rate as a percentage of the preads rate (goal >= 70%).
#  3. `quorum bench --stats -d 32 -s 64k`: peak RSS against
#     1.5 x (32 x 3 x 64 KiB) + 20 MiB.
#  4. Early quorum with one replica 10x slower (--delay 0=1ms
#     --delay 1=1ms --delay 2=10ms, replicas across a network), 4k reads at
#     depth 1: p99 latency against that of one child delayed 1ms alone (the threshold-th
#     fastest replica's own latency); goal <= 1.2x. The same run without
#     --early-quorum is shown for contrast. p99s are medians over REPEAT.
#     If the reference's p99 exceeds 2000us (twice its delay), the machine
#     was too busy to measure: item 4 is reported INVALID and counts as a miss.
#
# Exit status 0 only if every goal is met; the last line says which were
# missed. Each run's command is printed before its case, each run's time as
# it completes, and the tables at the end.
#
# Environment: SIZE (default 256M), REPEAT (default 3), QUORUM (default
# target/release/quorum), QEMU_IMG (default qemu-img), RUN_TIMEOUT (seconds
# per run, default 300; a run that times out or fails counts as a miss),
# WARMUP (untimed runs before each timed one in items 1 and 2, default 1),
# RETRIES (tries of a run that fails, default 3),
# request counts: COUNT_READ4K_D1 (100000), COUNT_READ4K_D32 (200000),
# COUNT_READ64K_D8 (50000), COUNT_WRITE4K_D1 (50000), COUNT_DIFFER (20000),
# COUNT_PREADS (200000), COUNT_RSS (20000), COUNT_LATENCY (1000).
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=bench-vs-qemu
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

SIZE=${SIZE:-256M}
REPEAT=${REPEAT:-3}
QUORUM=${QUORUM:-target/release/quorum}
QEMU_IMG=${QEMU_IMG:-qemu-img}
RUN_TIMEOUT=${RUN_TIMEOUT:-300}
WARMUP=${WARMUP:-1}
RETRIES=${RETRIES:-3}
COUNT_READ4K_D1=${COUNT_READ4K_D1:-100000}
COUNT_READ4K_D32=${COUNT_READ4K_D32:-200000}
COUNT_READ64K_D8=${COUNT_READ64K_D8:-50000}
COUNT_WRITE4K_D1=${COUNT_WRITE4K_D1:-50000}
COUNT_DIFFER=${COUNT_DIFFER:-20000}
COUNT_PREADS=${COUNT_PREADS:-200000}
COUNT_RSS=${COUNT_RSS:-20000}
COUNT_LATENCY=${COUNT_LATENCY:-1000}

command -v "$QEMU_IMG" >/dev/null || { echo "bench-vs-qemu: $QEMU_IMG not found" >&2; exit 1; }
if ! { [ -x "$QUORUM" ] && grep -q -- '--driver' <<<"$("$QUORUM" bench --help)"; }; then
    echo "# building $QUORUM" >&2
    cargo build --release -p quorum-cli >&2
fi

if [ $# -ge 1 ]; then
    DIR=$1
    mkdir -p "$DIR"
else
    DIR=$(mktemp -d)
    trap 'rm -rf "$DIR"' EXIT
fi
case $DIR in
*,*) echo "bench-vs-qemu: DIR may not contain a comma (QEMU's option syntax)" >&2; exit 1 ;;
esac

bytes=$(numfmt --from=iec "$SIZE")
make_image "$DIR/r0.img" "$bytes"
copy_image "$DIR/r0.img" "$DIR/r1.img"
copy_image "$DIR/r0.img" "$DIR/r2.img"
make_image "$DIR/d2.img" "$bytes"
SAME=("$DIR/r0.img" "$DIR/r1.img" "$DIR/r2.img")
DIFFER=("$DIR/r0.img" "$DIR/r1.img" "$DIR/d2.img")

# QEMU's quorum over raw files with the given aio mode.
qemu_opts() { # AIO FILE...
    local aio=$1 i=0 f o="driver=quorum,vote-threshold=2"
    shift
    for f in "$@"; do
        o+=",children.$i.driver=raw,children.$i.file.driver=file,children.$i.file.filename=$f,children.$i.file.aio=$aio"
        i=$((i + 1))
    done
    printf '%s' "$o"
}

# Runs a bench; prints its whole output, or ERR if it failed or timed out
# (its error goes to stderr).
# A run that fails is tried again, up to RETRIES times in all, and each
# failure is said: qemu-img bench 10.0.2 with aio=io_uring children dies now
# and then at depth 1 (SIGSEGV, a stack overflow in its completion path),
# and a crash must not leave QEMU's figure to its slower aio mode.
run_out() {
    local out rc try=1
    while :; do
        rc=0
        out=$(timeout "$RUN_TIMEOUT" "$@" 2>&1) || rc=$?
        if [ "$rc" -eq 0 ]; then
            printf '%s\n' "$out"
            return
        fi
        printf 'bench-vs-qemu: failed with status %s (try %s of %s): %s: %s\n' \
            "$rc" "$try" "$RETRIES" "$(show "$@")" "$(tail -n 2 <<<"$out")" >&2
        if [ "$try" -ge "$RETRIES" ]; then
            echo ERR
            return
        fi
        try=$((try + 1))
    done
}

# run_out after WARMUP untimed runs of the same command.
warm_out() {
    local w=0
    while [ "$w" -lt "$WARMUP" ]; do
        run_out "$@" >/dev/null
        w=$((w + 1))
    done
    run_out "$@"
}

# The "Run completed in X seconds." figure of a run's output, or ERR.
secs_of() {
    local s
    s=$(sed -n 's/^Run completed in \([0-9.]*\) seconds\.$/\1/p' <<<"$1")
    echo "${s:-ERR}"
}

# PASS if VALUE OP GOAL (OP: ge, gt, le), else FAIL.
verdict() { # VALUE OP GOAL
    awk -v v="$1" -v op="$2" -v g="$3" 'BEGIN {
        if (v == "-" || v == "ERR") { print "FAIL"; exit }
        ok = (op == "ge") ? (v >= g) : (op == "gt") ? (v > g) : (v <= g)
        print (ok ? "PASS" : "FAIL") }'
}

MISSES=()
miss() { MISSES+=("$1"); }

# io_uring: QEMU fails to open the image when it cannot set up a ring.
URING=yes
if ! "$QEMU_IMG" bench --image-opts -c 1 "$(qemu_opts io_uring "${SAME[@]}")" >/dev/null 2>&1; then
    URING=no
fi

echo "# bench-vs-qemu $(date -u +%FT%TZ)"
echo "# machine: $(nproc) cores (nproc), load average $(cut -d' ' -f1-3 /proc/loadavg), kernel $(uname -sr)"
echo "# qemu-img: $("$QEMU_IMG" --version | head -n 1)"
echo "# quorum: $QUORUM ($(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ', uncommitted changes'))"
echo "# replicas: 3 x $SIZE random (identical) + d2.img ($SIZE other random data) in $DIR; threshold 2; cache writeback"
echo "# each figure: median of $REPEAT runs, alternating tools, each timed run after $WARMUP untimed one(s) of the same command; QEMU = faster of aio=threads and aio=io_uring"
if [ "$URING" = no ]; then
    echo "# io_uring: unavailable to QEMU here (aio=io_uring failed to open); QEMU's figure is aio=threads"
fi

ROWS=()

# One case of item 1: NAME GOAL COUNT SET(same|differ) FLAGS...
bench_case() {
    local name=$1 goal=$2 count=$3 set=$4
    shift 4
    local -a files
    if [ "$set" = same ]; then files=("${SAME[@]}"); else files=("${DIFFER[@]}"); fi
    local -a qt=("$QEMU_IMG" bench --image-opts -c "$count" "$@" "$(qemu_opts threads "${files[@]}")")
    local -a qu=("$QEMU_IMG" bench --image-opts -c "$count" "$@" "$(qemu_opts io_uring "${files[@]}")")
    local -a qs=("$QUORUM" bench "${files[@]}" --threshold 2 -c "$count" "$@")
    local -a qk=("${qs[@]}" --driver tokio)
    echo
    echo "## $name"
    show "${qt[@]}"
    if [ "$URING" = yes ]; then show "${qu[@]}"; fi
    show "${qs[@]}"
    show "${qk[@]}"
    local -a t=() u=() s=() k=()
    local r
    for r in $(seq "$REPEAT"); do
        t+=("$(secs_of "$(warm_out "${qt[@]}")")")
        if [ "$URING" = yes ]; then u+=("$(secs_of "$(warm_out "${qu[@]}")")"); else u+=(-); fi
        s+=("$(secs_of "$(warm_out "${qs[@]}")")")
        k+=("$(secs_of "$(warm_out "${qk[@]}")")")
        printf 'run %d: qemu threads %s s, qemu io_uring %s s, quorum sync %s s, quorum tokio %s s\n' \
            "$r" "${t[-1]}" "${u[-1]}" "${s[-1]}" "${k[-1]}"
    done
    local mt mu ms mk qemu
    mt=$(median "${t[@]}")
    if [ "$URING" = yes ]; then mu=$(median "${u[@]}"); else mu=-; fi
    ms=$(median "${s[@]}")
    mk=$(median "${k[@]}")
    # The faster of QEMU's two (a failed mode does not count).
    qemu=$(awk -v a="$mt" -v b="$mu" 'BEGIN {
        ok_a = (a != "ERR" && a != "-"); ok_b = (b != "ERR" && b != "-")
        if (ok_a && ok_b) print (a < b ? a : b); else if (ok_a) print a; else if (ok_b) print b; else print "ERR" }')
    local rs rk vs vk
    rs=$(ratio "$qemu" "$ms")
    rk=$(ratio "$qemu" "$mk")
    vs=$(verdict "$rs" ge "$goal")
    vk=$(verdict "$rk" gt 1)
    [ "$vs" = PASS ] || miss "$name: sync ratio $rs < $goal"
    [ "$vk" = PASS ] || miss "$name: tokio ratio $rk <= 1"
    ROWS+=("$(printf '%-30s %10s %10s %9s %6s %5s %-6s %9s %6s %-6s' \
        "$name" "$mt" "$mu" "$ms" "$rs" "$goal" "$vs" "$mk" "$rk" "$vk")")
}

bench_case "read 4k depth 1" 2.5 "$COUNT_READ4K_D1" same -d 1 -s 4k
bench_case "read 4k depth 32" 2 "$COUNT_READ4K_D32" same -d 32 -s 4k
bench_case "read 64k depth 8" 1.5 "$COUNT_READ64K_D8" same -d 8 -s 64k
bench_case "read 64k d8, replica 2 differs" 5 "$COUNT_DIFFER" differ -d 8 -s 64k

# Item 2: the voting against three plain preads per request.
echo
echo "## item 2: quorum sync against three back-to-back preads, 4k reads depth 1"
P=("$QUORUM" bench "${SAME[@]}" --threshold 2 -c "$COUNT_PREADS" -d 1 -s 4k --driver preads)
S=("$QUORUM" bench "${SAME[@]}" --threshold 2 -c "$COUNT_PREADS" -d 1 -s 4k)
show "${P[@]}"
show "${S[@]}"
pt=()
st=()
for r in $(seq "$REPEAT"); do
    pt+=("$(secs_of "$(warm_out "${P[@]}")")")
    st+=("$(secs_of "$(warm_out "${S[@]}")")")
    printf 'run %d: preads %s s, quorum sync %s s\n' "$r" "${pt[-1]}" "${st[-1]}"
done
mp=$(median "${pt[@]}")
msy=$(median "${st[@]}")
rate() { awk -v c="$1" -v s="$2" 'BEGIN { if (s == "ERR" || s + 0 == 0) print "-"; else printf "%.0f\n", c / s }'; }
preads_rate=$(rate "$COUNT_PREADS" "$mp")
sync_rate=$(rate "$COUNT_PREADS" "$msy")
pct=$(awk -v a="$sync_rate" -v b="$preads_rate" 'BEGIN { if (a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.1f\n", 100 * a / b }')
v2=$(verdict "$pct" ge 70)
[ "$v2" = PASS ] || miss "item 2: quorum sync at $pct% of the preads rate < 70%"

# Item 3: peak RSS at depth 32 x 64 KiB.
echo
echo "## item 3: peak RSS, 64k reads depth 32"
M=("$QUORUM" bench "${SAME[@]}" --threshold 2 -c "$COUNT_RSS" -d 32 -s 64k --stats)
MK=("${M[@]}" --driver tokio)
show "${M[@]}"
show "${MK[@]}"
rss_of() {
    local v
    v=$(sed -n 's/^Peak RSS: \([0-9]*\) KiB$/\1/p' <<<"$1")
    echo "${v:-ERR}"
}
rss=$(rss_of "$(run_out "${M[@]}")")
rss_tokio=$(rss_of "$(run_out "${MK[@]}")")
bound=$((3 * 32 * 3 * 64 / 2 + 20 * 1024))
v3=$(verdict "$rss" le "$bound")
[ "$v3" = PASS ] || miss "item 3: peak RSS $rss KiB > $bound KiB"
printf 'sync %s KiB, tokio %s KiB\n' "$rss" "$rss_tokio"

# Item 4: early quorum with one replica 10x slower.
echo
echo "## item 4: p99 latency with replica 2 ten times slower, 4k reads depth 1"
DELAYS=(--delay "0=1ms" --delay "1=1ms" --delay "2=10ms")
E=("$QUORUM" bench "${SAME[@]}" --threshold 2 -c "$COUNT_LATENCY" -d 1 -s 4k "${DELAYS[@]}" --early-quorum --stats)
N=("$QUORUM" bench "${SAME[@]}" --threshold 2 -c "$COUNT_LATENCY" -d 1 -s 4k "${DELAYS[@]}" --stats)
EK=("${E[@]}" --driver tokio)
R=("$QUORUM" bench "${SAME[0]}" --threshold 1 -c "$COUNT_LATENCY" -d 1 -s 4k --delay "0=1ms" --stats)
show "${E[@]}"
show "${N[@]}"
show "${EK[@]}"
show "${R[@]}"
p99_of() {
    local v
    v=$(sed -n 's/^Latency: .*, p99 \([0-9.]*\)us, .*$/\1/p' <<<"$1")
    echo "${v:-ERR}"
}
et=()
nt=()
kt=()
rt=()
for r in $(seq "$REPEAT"); do
    et+=("$(p99_of "$(run_out "${E[@]}")")")
    nt+=("$(p99_of "$(run_out "${N[@]}")")")
    kt+=("$(p99_of "$(run_out "${EK[@]}")")")
    rt+=("$(p99_of "$(run_out "${R[@]}")")")
    printf 'run %d: p99 early %s us, not early %s us, tokio early %s us, one child %s us\n' \
        "$r" "${et[-1]}" "${nt[-1]}" "${kt[-1]}" "${rt[-1]}"
done
p99e=$(median "${et[@]}")
p99n=$(median "${nt[@]}")
p99k=$(median "${kt[@]}")
p99r=$(median "${rt[@]}")
r4=$(ratio "$p99e" "$p99r")
r4n=$(ratio "$p99n" "$p99r")
r4k=$(ratio "$p99k" "$p99r")
v4=$(verdict "$r4" le 1.2)
# A 1ms child whose p99 is over twice its delay measured the machine's
# stalls, not the replica: the ratio means nothing then, pass or fail.
if [ "$(verdict "$p99r" le 2000)" = FAIL ]; then
    v4="INVALID (reference p99 over 2x its 1ms delay: the machine is busy)"
    miss "item 4: not measured, the one-child reference p99 $p99r us is over 2000 us"
elif [ "$v4" != PASS ]; then
    miss "item 4: early-quorum p99 ${r4}x the fastest replica's > 1.2x"
fi

# Last: the write case (it overwrites the replicas).
bench_case "write 4k depth 1" 5 "$COUNT_WRITE4K_D1" same -d 1 -s 4k -w

echo
echo "# results (median of $REPEAT runs; seconds; ratio = QEMU / quorum, QEMU = faster of threads and io_uring)"
printf '%-30s %10s %10s %9s %6s %5s %-6s %9s %6s %-6s\n' \
    case qemu-thr qemu-uring sync ratio goal result tokio ratio result
for row in "${ROWS[@]}"; do
    echo "$row"
done
echo
echo "item 2: preads $preads_rate req/s, quorum sync $sync_rate req/s: $pct% of preads (goal >= 70%) $v2"
echo "item 3: peak RSS $rss KiB (bound 1.5 x (32 x 3 x 64 KiB) + 20 MiB = $bound KiB) $v3; tokio driver $rss_tokio KiB (for information)"
echo "item 4: p99 early quorum $p99e us vs one 1ms child $p99r us: ${r4}x (goal <= 1.2x) $v4;" \
    "without early quorum $p99n us (${r4n}x); tokio early quorum $p99k us (${r4k}x, for information)"
echo "# load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ ${#MISSES[@]} -eq 0 ]; then
    echo "all goals met"
else
    echo "goals missed (${#MISSES[@]}):"
    printf '  %s\n' "${MISSES[@]}"
    exit 1
fi
