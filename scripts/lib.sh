# What the benchmark scripts share; sourced, with NAME set to the script's
# name (for messages) and, for stop_pid, STOP_TIMEOUT.

die() { echo "$NAME: $*" >&2; exit 1; }

# A command line, shell-quoted (single quotes where needed).
show() {
    local a out="" q="'"
    for a in "$@"; do
        if [[ $a =~ ^[A-Za-z0-9_./=:,+@%-]+$ ]]; then
            out+="$a "
        else
            out+="$q${a//$q/$q\\$q$q}$q "
        fi
    done
    printf '$ %s\n' "${out% }"
}

# Waits up to STOP_TIMEOUT s for a process (already sent SIGTERM) to exit,
# then SIGKILLs it; reaps it.
stop_pid() { # PID
    local p=$1 i=0
    while kill -0 "$p" 2>/dev/null && [ "$i" -lt $((STOP_TIMEOUT * 10)) ]; do
        sleep 0.1
        i=$((i + 1))
    done
    if kill -0 "$p" 2>/dev/null; then
        echo "$NAME: pid $p still running after ${STOP_TIMEOUT}s: SIGKILL" >&2
        kill -9 "$p" 2>/dev/null || true
    fi
    wait "$p" 2>/dev/null || true
}

# The median of the figures given; ERR or - if any is (a run that failed,
# a figure that does not apply), - if none.
median() {
    local v
    [ $# -gt 0 ] || { echo -; return; }
    for v in "$@"; do
        if [ "$v" = ERR ] || [ "$v" = - ]; then
            echo "$v"
            return
        fi
    done
    printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 }
        END { if (NR % 2) { print a[(NR + 1) / 2]; exit }
              m = sprintf("%.3f", (a[NR / 2] + a[NR / 2 + 1]) / 2); sub(/\.?0+$/, "", m); print m }'
}

# A / B to two decimals; - when either is missing or B is 0.
ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN {
        if (a == "ERR" || b == "ERR" || a == "-" || b == "-" || b + 0 == 0) print "-"
        else printf "%.2f\n", a / b }'
}

# Replica images are made as a user would make them: random data with
# `head -c`, copies with `cp`. How files were written decides how the page
# cache holds them, and that moves both servers' figures a lot, in opposite
# directions per row: written 4 MiB at a time (`dd bs=4M`), they sit in
# large folios; then 64 KiB reads got faster for quorum serve (25-32k IOPS
# against 15-19k in one interleaved run; another run saw no difference)
# while 4 KiB random writes at depth 32 collapsed for both servers, each
# write dirtying a whole large folio (quorum serve 7-8k IOPS, p99 23-28 ms,
# against 75-80k; QEMU 8-10k against 25-27k). `head -c` and `cp` leave
# small folios. The servers compared (or the rebuild and `cp`) always read
# the same files.

# make_image FILE BYTES: BYTES of random data.
make_image() {
    head -c "$2" /dev/urandom >"$1"
}

# copy_image FROM TO
copy_image() {
    cp "$1" "$2"
}

# Drops a process that has exited from PIDS (what the EXIT trap stops).
forget_pid() { # PID
    local p kept=()
    for p in "${PIDS[@]}"; do
        [ "$p" = "$1" ] || kept+=("$p")
    done
    PIDS=("${kept[@]+"${kept[@]}"}")
}
