#!/usr/bin/env bash
# What an online rebuild costs: issue 13's goals for `quorum serve --map`.
#
#   scripts/bench-resync.sh [DIR]
#
# Creates, in DIR (default: $DIR, else a temporary directory removed at the
# end; a DIR given is kept, with every run's fio JSON in DIR/runs and every
# server's log in DIR/logs), r0.img r1.img r2.img: SIZE bytes of the same
# random data (scripts/lib.sh says how they are made), in
# the page cache. Every server is
#
#   quorum serve --listen unix:SOCK --qmp unix:QMP --map MAP --threshold 2
#                --resync-speed SPEED r0 r1 r2
#
# and a rebuild is a fresh, empty image of SIZE bytes added over QMP as
# QEMU's tools would: `blockdev-add {"driver": "file", ...}`, then
# `x-blockdev-change {"parent": "quorum", "node": ...}` (SPEC R-SYNC-7:
# rebuilt online by a resync job, QMP `query-block-jobs` device "resync").
#
# (a) Client cost of a throttled rebuild. fio's nbd ioengine (libnbd), 4k
#     random read/write 50/50 at depth 16 on one connection, WARMUP untimed
#     + RUNTIME timed seconds: once on the three replicas alone ("idle"),
#     once with a fourth child attached to be rebuilt and its job paused at
#     once ("paused": the same children, no copy traffic), once while the
#     fourth child is rebuilt at SPEED bytes/s ("rebuild"; the job is
#     checked to be still running when fio ends, and what it copied
#     meanwhile is shown). Goal: rebuild IOPS >= 80% of paused IOPS — what
#     the copy at SPEED takes from clients. The fourth child takes every
#     client write from the moment it is added (SPEC R-SYNC-7), rebuilt or
#     not, paused or not, and stays a fourth replica afterwards: the ratios
#     to the three replicas alone are shown too, for information.
# (b) Resync throughput with no client. A fourth child rebuilt with no
#     limit (`--resync-speed 0`) on the SIZE-byte device: the job's time is
#     from its JOB_STATUS_CHANGE "created" to its BLOCK_JOB_COMPLETED (both
#     stamped by the server), bytes/s = the job's `len` over it. Against
#     `cp` of one replica to a new file in the same directory (page cache,
#     no sync). The job is complete once every chunk is copied (the child
#     votes everywhere); like cp it does not wait for the disk: its flush,
#     which makes the copies durable in the map file, comes right after
#     (and one every 5 s while it runs). Goal: resync >= 70% of cp's
#     bytes/s.
#
# REPEAT rounds, each running every case once (idle and rebuild, cp and
# resync alternating); each figure is the median of its REPEAT runs.
# Exit status 0 only if both goals are met; the table at the end (markdown)
# and the last line say which were missed.
#
# Environment: SIZE (default 1G), REPEAT (3), RUNTIME (timed seconds of a
# fio run, 10), WARMUP (2), SPEED (the throttled rebuild's rate, 50M),
# QUORUM (default target/release/quorum, built if missing), FIO (fio),
# PYTHON (python3: QMP over a unix socket, fio's JSON), DIR,
# START_TIMEOUT (20), STOP_TIMEOUT (30), JOB_TIMEOUT (seconds for an
# unthrottled rebuild, 300).
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=bench-resync
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

SIZE=${SIZE:-1G}
REPEAT=${REPEAT:-3}
RUNTIME=${RUNTIME:-10}
WARMUP=${WARMUP:-2}
SPEED=${SPEED:-50M}
QUORUM=${QUORUM:-target/release/quorum}
FIO=${FIO:-fio}
PYTHON=${PYTHON:-python3}
START_TIMEOUT=${START_TIMEOUT:-20}
STOP_TIMEOUT=${STOP_TIMEOUT:-30}
JOB_TIMEOUT=${JOB_TIMEOUT:-300}
FIO_TIMEOUT=$((WARMUP + RUNTIME + 60))

command -v "$FIO" >/dev/null || die "$FIO not found (Debian: apt-get install fio)"
command -v "$PYTHON" >/dev/null || die "$PYTHON not found (it speaks QMP and reads fio's JSON)"
"$FIO" --enghelp=nbd >/dev/null 2>&1 || die "$FIO has no nbd ioengine (Debian's fio has; it needs libnbd)"
if [ ! -x "$QUORUM" ]; then
    echo "# building $QUORUM" >&2
    cargo build --release --bin quorum >&2
fi
"$QUORUM" serve --help 2>/dev/null | grep -q -- --resync-speed || die "$QUORUM serve has no --map/--resync-speed"

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
    if [ -n "${DIR:-}" ]; then rm -f "$DIR"/*.sock "$DIR/new.img" "$DIR/cp.img"; fi
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
*,* | *\"* | *\\* | *\?* | *' '*) die "DIR may not contain a comma, a quote, a backslash, '?' or a space (NBD URIs)" ;;
esac
# A unix socket path is limited to 107 bytes.
[ ${#DIR} -le 80 ] || die "DIR is too long for a unix socket path: $DIR"
mkdir -p "$DIR/runs" "$DIR/logs"

bytes=$(numfmt --from=iec "$SIZE")
speed_bytes=$(numfmt --from=iec "$SPEED")
make_image "$DIR/r0.img" "$bytes"
copy_image "$DIR/r0.img" "$DIR/r1.img"
copy_image "$DIR/r0.img" "$DIR/r2.img"
FILES=("$DIR/r0.img" "$DIR/r1.img" "$DIR/r2.img")
SOCK=$DIR/nbd.sock
QMP=$DIR/qmp.sock
URI="nbd+unix:///?socket=$SOCK"

# QMP over the monitor's unix socket, QEMU's commands only (no qemu.qmp
# needed):
#   qmp.py SOCK attach FILE       blockdev-add + x-blockdev-change of FILE
#                                 as node "new"; waits for the job to run
#   qmp.py SOCK pause             block-job-pause of the job
#   qmp.py SOCK job               "LEN OFFSET STATUS" of the job, or "none"
#   qmp.py SOCK rebuild FILE T    attach, then wait (at most T s) for
#                                 BLOCK_JOB_COMPLETED: "LEN SECONDS" (the
#                                 server's timestamps, created to completed)
cat >"$DIR/qmp.py" <<'EOF'
import json, socket, sys, time

sock, what = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX)
s.connect(sock)
f = s.makefile("rw")
events = []

def line():
    l = f.readline()
    if not l:
        sys.exit("bench-resync: the QMP monitor closed")
    return json.loads(l)

def ask(cmd, args=None):
    m = {"execute": cmd}
    if args is not None:
        m["arguments"] = args
    f.write(json.dumps(m) + "\n")
    f.flush()
    while True:
        r = line()
        if "event" in r:
            events.append(r)
            continue
        if "error" in r:
            sys.exit("bench-resync: %s: %s" % (cmd, r["error"]["desc"]))
        return r["return"]

def stamp(e):
    return e["timestamp"]["seconds"] + e["timestamp"]["microseconds"] / 1e6

line()  # the greeting
ask("qmp_capabilities")

def job():
    j = ask("query-block-jobs")
    return j[0] if j else None

if what in ("attach", "rebuild"):
    ask("blockdev-add", {"driver": "file", "node-name": "new", "filename": sys.argv[3]})
    ask("x-blockdev-change", {"parent": "quorum", "node": "new"})
if what == "attach":
    t = time.time()
    while not (job() or {}).get("len"):
        if time.time() - t > 10:
            sys.exit("bench-resync: no resync job 10 s after the child was added")
        time.sleep(0.05)
elif what == "pause":
    ask("block-job-pause", {"device": "resync"})
elif what == "job":
    j = job()
    print("%d %d %s" % (j["len"], j["offset"], j["status"]) if j else "none")
elif what == "rebuild":
    deadline = time.time() + float(sys.argv[4])
    s.settimeout(5)
    while not any(e["event"] == "BLOCK_JOB_COMPLETED" for e in events):
        if time.time() > deadline:
            sys.exit("bench-resync: no BLOCK_JOB_COMPLETED within %s s" % sys.argv[4])
        try:
            r = line()
        except socket.timeout:
            continue
        if "event" in r:
            events.append(r)
    created = [e for e in events if e["event"] == "JOB_STATUS_CHANGE" and e["data"]["status"] == "created"]
    done = [e for e in events if e["event"] == "BLOCK_JOB_COMPLETED"][0]
    if "error" in done["data"]:
        sys.exit("bench-resync: the job failed: %s" % done["data"]["error"])
    if done["data"]["offset"] != done["data"]["len"]:
        sys.exit("bench-resync: the job ended early: %s" % done["data"])
    print("%d %.3f" % (done["data"]["len"], stamp(done) - stamp(created[0])))
else:
    sys.exit("bench-resync: qmp.py: what is %r?" % what)
EOF
qmp() { "$PYTHON" "$DIR/qmp.py" "$QMP" "$@"; }

# Starts quorum serve (resync speed SPEED) in the background, its output to
# LOG, with a fresh map; sets SERVER_PID. Ready when it has said
# "listening on".
server_cmd() { # SPEED -> sets CMD
    CMD=("$QUORUM" serve --listen "unix:$SOCK" --qmp "unix:$QMP" --map "$DIR/map"
        --threshold 2 --resync-speed "$1" "${FILES[@]}")
}
start_server() { # SPEED LOG
    local log=$2 i=0
    rm -f "$SOCK" "$QMP" "$DIR/map"
    server_cmd "$1"
    "${CMD[@]}" >"$log" 2>&1 </dev/null &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    until grep -qs 'listening on' "$log"; do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            wait "$SERVER_PID" 2>/dev/null || true
            forget_pid "$SERVER_PID"
            die "quorum serve exited before listening: $(tail -n 3 "$log")"
        fi
        [ "$i" -lt $((START_TIMEOUT * 10)) ] || die "quorum serve not listening after ${START_TIMEOUT}s"
        sleep 0.1
        i=$((i + 1))
    done
}

stop_server() {
    kill "$SERVER_PID" 2>/dev/null || true
    stop_pid "$SERVER_PID"
    forget_pid "$SERVER_PID"
    rm -f "$SOCK" "$QMP" "$DIR/new.img"
}

# A fresh, empty child image of SIZE bytes.
fresh() {
    rm -f "$DIR/new.img"
    truncate -s "$bytes" "$DIR/new.img"
}

FIO_ARGS=(--ioengine=nbd --rw=randrw --rwmixread=50 --bs=4k --iodepth=16 --numjobs=1
    --group_reporting --unified_rw_reporting=mixed --norandommap
    --time_based "--ramp_time=$WARMUP" "--runtime=$RUNTIME" --output-format=json)

# IOPS (reads and writes together) from a fio JSON output file, or ERR.
parse_fio() { # FILE
    "$PYTHON" - "$1" <<'EOF' 2>/dev/null || echo ERR
import json, sys
text = open(sys.argv[1]).read()
data = json.loads(text[text.index("{"):])
job = data["jobs"][0]
assert job["error"] == 0, "fio job error %s" % job["error"]
m = job["mixed"]
assert m["total_ios"] > 0, "no I/O"
print("%.0f" % m["iops"])
EOF
}

# One fio run against the running server; sets FIG (IOPS or ERR).
run_fio() { # TAG
    local tag=$1 rc=0 fio_pid
    timeout "$FIO_TIMEOUT" "$FIO" --name="$tag" "${FIO_ARGS[@]}" --uri="$URI" \
        --output="$DIR/runs/$tag.json" >"$DIR/logs/$tag.fio.log" 2>&1 </dev/null &
    fio_pid=$!
    PIDS+=("$fio_pid")
    wait "$fio_pid" || rc=$?
    forget_pid "$fio_pid"
    FIG=ERR
    if [ "$rc" -eq 0 ]; then FIG=$(parse_fio "$DIR/runs/$tag.json"); fi
    if [ "$FIG" = ERR ]; then
        echo "bench-resync: fio run $tag failed (status $rc): $(tail -n 2 "$DIR/logs/$tag.fio.log" | tr '\n' ' ')" >&2
    fi
}

# The time of a command in seconds (3 decimals).
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f\n", b - a }'; }

# 1 if VALUE >= GOAL, else 0 (also when VALUE is missing).
at_least() { awk -v v="$1" -v g="$2" 'BEGIN { if (v == "-" || v == "ERR") print 0; else print (v >= g) + 0 }'; }

mib() { awk -v v="$1" 'BEGIN { if (v == "ERR") print v; else printf "%.0f\n", v / 1048576 }'; }

echo "# bench-resync $(date -u +%FT%TZ)"
echo "# machine: $(nproc) cores (nproc), load average $(cut -d' ' -f1-3 /proc/loadavg), kernel $(uname -sr), $(awk '/MemTotal/ { printf "%d MiB RAM", $2 / 1024 }' /proc/meminfo)"
echo "# fio: $("$FIO" --version) (nbd ioengine)"
echo "# quorum: $QUORUM (commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD 2>/dev/null || echo ', uncommitted changes in the tree'); binary built $(date -u -r "$QUORUM" +%FT%TZ))"
echo "# device: 3 x $SIZE of the same random data in $DIR (page cache), threshold 2, --map with the default 1 MiB chunks; a rebuild: a 4th, empty child added over QMP"
echo "# (a) fio 4k randrw 50/50 depth 16, ${WARMUP}s untimed + ${RUNTIME}s timed, idle vs during a rebuild at $SPEED/s; (b) an unthrottled rebuild of $SIZE vs cp; $REPEAT rounds, medians"
server_cmd "$SPEED"
show "${CMD[@]}"
show "$FIO" --name=TAG "${FIO_ARGS[@]}" --uri="$URI"
show "$PYTHON" "$DIR/qmp.py" "$QMP" attach "$DIR/new.img"

IDLE=() PAUSED=() BUSY=() COPIED=() RESYNC=() CP=()
for r in $(seq "$REPEAT"); do
    # (a) idle, the fourth child attached with its rebuild paused, then
    # during a rebuild at SPEED.
    start_server "$SPEED" "$DIR/logs/idle-$r.log"
    run_fio "idle-$r"
    idle=$FIG
    stop_server
    fresh
    start_server "$SPEED" "$DIR/logs/paused-$r.log"
    qmp attach "$DIR/new.img"
    qmp pause
    run_fio "paused-$r"
    paused=$FIG
    stop_server
    fresh
    start_server "$SPEED" "$DIR/logs/rebuild-$r.log"
    qmp attach "$DIR/new.img"
    before=$(qmp job)
    t0=$(now)
    run_fio "rebuild-$r"
    busy=$FIG
    after=$(qmp job)
    t1=$(now)
    stop_server
    # The job must have run all along: still running at the end.
    case $after in
    none | *" concluded" | *" null")
        echo "bench-resync: round $r: the rebuild ended before fio did ($before -> $after): make SIZE larger or SPEED lower" >&2
        busy=ERR
        ;;
    esac
    copied=ERR
    if [ "$busy" != ERR ]; then
        copied=$(awk -v a="${before#* }" -v b="${after#* }" -v t="$(elapsed "$t0" "$t1")" \
            'BEGIN { split(a, x, " "); split(b, y, " "); printf "%.1f\n", (y[1] - x[1]) / t / 1048576 }')
    fi
    IDLE+=("$idle") PAUSED+=("$paused") BUSY+=("$busy") COPIED+=("$copied")
    # (b) cp, then an unthrottled rebuild (each after a sync, so that
    # neither starts behind the other's writeback).
    sync
    t0=$(now)
    cp "$DIR/r0.img" "$DIR/cp.img"
    t1=$(now)
    rm -f "$DIR/cp.img"
    cp_s=$(elapsed "$t0" "$t1")
    fresh
    sync
    start_server 0 "$DIR/logs/resync-$r.log"
    out=$(qmp rebuild "$DIR/new.img" "$JOB_TIMEOUT") || out="ERR ERR"
    stop_server
    resync_s=${out#* }
    cp_bps=$(awk -v b="$bytes" -v t="$cp_s" 'BEGIN { printf "%.0f\n", b / t }')
    resync_bps=ERR
    if [ "$resync_s" != ERR ]; then
        resync_bps=$(awk -v b="${out% *}" -v t="$resync_s" 'BEGIN { printf "%.0f\n", b / t }')
    fi
    CP+=("$cp_bps") RESYNC+=("$resync_bps")
    echo "round $r: idle $idle IOPS; rebuild paused $paused IOPS; during a rebuild at $SPEED/s $busy IOPS (the rebuild copied $copied MiB/s meanwhile); cp $SIZE in ${cp_s}s ($(mib "$cp_bps") MiB/s); unthrottled resync of $SIZE in ${resync_s}s ($(mib "$resync_bps") MiB/s)"
done

mi=$(median "${IDLE[@]}")
mp=$(median "${PAUSED[@]}")
mb=$(median "${BUSY[@]}")
mc=$(median "${COPIED[@]}")
mcp=$(median "${CP[@]}")
mrs=$(median "${RESYNC[@]}")
r_iops=$(ratio "$mb" "$mp")
r_four=$(ratio "$mb" "$mi")
r_floor=$(ratio "$mp" "$mi")
r_sync=$(ratio "$mrs" "$mcp")
MISSES=()
res_a=PASS
res_b=PASS
if [ "$(at_least "$r_iops" 0.80)" = 0 ]; then
    res_a=FAIL
    MISSES+=("client IOPS during a rebuild at $SPEED/s: $mb = ${r_iops}x the same children with the rebuild paused, $mp (goal >= 0.80)")
fi
if [ "$(at_least "$r_sync" 0.70)" = 0 ]; then
    res_b=FAIL
    MISSES+=("unthrottled resync: $(mib "$mrs") MiB/s = ${r_sync}x cp's $(mib "$mcp") MiB/s (goal >= 0.70)")
fi

echo
echo "# results (median of $REPEAT rounds; $(date -u +%F), $(nproc) cores, load average at the end $(cut -d' ' -f1-3 /proc/loadavg))"
echo
echo "| case | quorum | reference | ratio | goal | result |"
echo "| --- | --- | --- | --- | --- | --- |"
echo "| client IOPS, fio 4k randrw depth 16, during a rebuild at $SPEED/s (it copied $mc MiB/s) vs the same four children, rebuild paused | $mb | $mp | ${r_iops}× | ≥ 0.80 | $res_a |"
echo "| the same during the rebuild vs three children alone, no fourth (information: what a fourth replica costs, rebuilt or not) | $mb | $mi | ${r_four}× | - | - |"
echo "| the same, rebuild paused vs three children alone (information: the fourth child's share of the client's writes) | $mp | $mi | ${r_floor}× | - | - |"
echo "| unthrottled resync of a $SIZE child, no client, vs \`cp\` (page cache) | $(mib "$mrs") MiB/s | $(mib "$mcp") MiB/s | ${r_sync}× | ≥ 0.70 | $res_b |"
echo
if [ ${#MISSES[@]} -eq 0 ]; then
    echo "all goals met"
else
    echo "goals missed (${#MISSES[@]}):"
    printf '  %s\n' "${MISSES[@]}"
    exit 1
fi
