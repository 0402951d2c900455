#!/usr/bin/env bash
# quorum bench and qemu-img bench side by side, on the same three raw replicas.
#
#   scripts/bench-vs-qemu.sh [DIR]
#
# Creates DIR/r0.img r1.img r2.img (SIZE bytes of random data each, identical),
# then for each case runs both tools REPEAT times, alternating, with the same
# flags: 3 children, vote-threshold 2, cache writeback (both defaults).
# Cases: 4 KiB reads at depth 1, 4 KiB reads at depth 32, 4 KiB writes at
# depth 1. Prints each run's "Run completed in" time and the IOPS it implies.
#
# Environment: SIZE (default 64M), READS (default 20000), WRITES (default
# 5000), REPEAT (default 3), QUORUM (default target/release/quorum, built if
# missing), QEMU_IMG (default qemu-img).
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE=${SIZE:-64M}
READS=${READS:-20000}
WRITES=${WRITES:-5000}
REPEAT=${REPEAT:-3}
QUORUM=${QUORUM:-target/release/quorum}
QEMU_IMG=${QEMU_IMG:-qemu-img}
DIR=${1:-$(mktemp -d)}

command -v "$QEMU_IMG" >/dev/null || { echo "bench-vs-qemu: $QEMU_IMG not found" >&2; exit 1; }
[ -x "$QUORUM" ] || cargo build --release -p quorum-cli

mkdir -p "$DIR"
bytes=$(numfmt --from=iec "$SIZE")
head -c "$bytes" /dev/urandom > "$DIR/r0.img"
cp "$DIR/r0.img" "$DIR/r1.img"
cp "$DIR/r0.img" "$DIR/r2.img"

opts="driver=quorum,vote-threshold=2"
files=()
for i in 0 1 2; do
    opts+=",children.$i.driver=raw,children.$i.file.filename=$DIR/r$i.img"
    files+=("$DIR/r$i.img")
done

echo "# $(date -u +%FT%TZ) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $($QEMU_IMG --version | head -1)"
echo "# replicas: 3 x $SIZE in $DIR, threshold 2"
printf '%-28s %-9s %10s %10s\n' case tool seconds IOPS

run() { # name count flags...
    local name=$1 count=$2; shift 2
    for _ in $(seq "$REPEAT"); do
        for tool in quorum qemu-img; do
            if [ "$tool" = quorum ]; then
                out=$("$QUORUM" bench "${files[@]}" --threshold 2 -c "$count" "$@")
            else
                out=$("$QEMU_IMG" bench --image-opts -c "$count" "$@" "$opts")
            fi
            secs=$(sed -n 's/^Run completed in \([0-9.]*\) seconds\.$/\1/p' <<<"$out")
            iops=$(awk -v c="$count" -v s="$secs" 'BEGIN { printf "%.0f", (s > 0 ? c / s : 0) }')
            printf '%-28s %-9s %10s %10s\n' "$name" "$tool" "$secs" "$iops"
        done
    done
}

run "read 4k depth 1" "$READS" -d 1 -s 4k
run "read 4k depth 32" "$READS" -d 32 -s 4k
run "write 4k depth 1" "$WRITES" -d 1 -s 4k -w
