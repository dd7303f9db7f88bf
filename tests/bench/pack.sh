#!/usr/bin/env bash
# Packing benchmark: `appliance cpio pack` against the GNU pipeline
# (`find . | cpio -o -H newc | gzip` and `... | zstd`) on the same ~100 MB tree.
# It prints figures and whether the target is met; it is not a test, so a missed target
# does not fail it (only a failed build or a command that fails or times out does).
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: tests/bench/pack.sh [-h] [--no-build] [TREE]

Packs a tree (TREE, or ~100 MB of files copied from /usr/lib and /usr/share into a
temporary directory) BENCH_RUNS times with each of:

  gnu-gzip     (cd TREE && find . | cpio -o -H newc --quiet | gzip)      gzip -6
  gnu-zstd     (cd TREE && find . | cpio -o -H newc --quiet | zstd -q)   zstd -3, 1 thread
  ours-gzip    appliance -q cpio pack TREE -o OUT -c gzip     libdeflate 6, members on all cores
  ours-zstd    appliance -q cpio pack TREE -o OUT -c zstd     zstd 1, long-distance matching, all cores

and prints the best wall time of each, the output size, and speed and size against the
GNU pipeline with the same compression. Target: at least 3x faster at equal or smaller size.

Options:
  -h, --help   this text
  --no-build   use target/release/appliance as it is instead of running cargo

Environment:
  BENCH_RUNS     runs per command, the best counts (default 3)
  BENCH_TIMEOUT  seconds before one command is killed and the benchmark fails (default 300)
  BENCH_MB       size of the generated tree in MB (default 100)

Progress goes to stderr, the table to stdout; temporary files live in a mktemp
directory removed on exit.
EOF
}

here=$PWD
bench=pack.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_args "$@"
((${#bench_rest[@]} <= 1)) || { say "one TREE at most (see -h)"; exit 2; }
tree=${bench_rest[0]:-}
# lib.sh works from the checkout's top: a relative TREE is relative to where we started.
[[ -z $tree || $tree == /* ]] || tree=$here/$tree

runs=${BENCH_RUNS:-3}
limit=${BENCH_TIMEOUT:-300}
megabytes=${BENCH_MB:-100}
bench_positive "BENCH_RUNS=$runs" "BENCH_TIMEOUT=$limit" "BENCH_MB=$megabytes"

for tool in cpio gzip zstd find timeout; do
    command -v "$tool" >/dev/null || { say "$tool is missing (host-tools/deps.sh installs it)"; exit 2; }
done
bench_build host
bench_tmp
work=$tmp

if [ -z "$tree" ]; then
    tree=$work/tree
    mkdir -p "$tree"
    echo "pack.sh: copying ~${megabytes} MB from /usr/lib and /usr/share into $tree" >&2
    # Regular files under 16 MB, in a fixed order, until the total is reached; cpio -p
    # copies them with their directories (symlinks come along as they are).
    find /usr/lib /usr/share -xdev \( -type f -size -16M -o -type l \) -printf '%s %p\n' 2>/dev/null |
        sort -k2 |
        awk -v limit=$((megabytes * 1000 * 1000)) '{ total += $1; print $2; if (total >= limit) exit }' |
        cpio -pdm --quiet "$tree" 2>/dev/null || true
fi
tree_bytes=$(du -sb "$tree" | cut -f1)
tree_files=$(find "$tree" | wc -l)
# Warm the page cache, so every command reads from memory.
find "$tree" -type f -exec cat {} + >/dev/null

# time_best NAME OUT COMMAND...: runs COMMAND $runs times, records the best wall time
# in $work/NAME.time and the size of OUT in $work/NAME.size.
time_best() {
    local name=$1 out=$2 best= start end elapsed
    shift 2
    for _ in $(seq "$runs"); do
        rm -f "$out"
        start=$(date +%s.%N)
        if ! timeout "$limit" "$@"; then
            echo "pack.sh: $name failed or took longer than ${limit}s" >&2
            exit 1
        fi
        end=$(date +%s.%N)
        elapsed=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }')
        if [ -z "$best" ] || awk -v a="$elapsed" -v b="$best" 'BEGIN { exit !(a < b) }'; then best=$elapsed; fi
    done
    echo "$best" >"$work/$name.time"
    stat -c %s "$out" >"$work/$name.size"
    echo "pack.sh: $name best of $runs: ${best}s, $(cat "$work/$name.size") bytes" >&2
}

# The pipeline exactly as people type it; bash -c so that timeout can bound it.
gnu='cd "$1" && find . | cpio -o -H newc --quiet | $2 >"$3"'
time_best gnu-gzip "$work/gnu.gz" bash -c "$gnu" gnu "$tree" "gzip" "$work/gnu.gz"
time_best gnu-zstd "$work/gnu.zst" bash -c "$gnu" gnu "$tree" "zstd -q" "$work/gnu.zst"
time_best ours-gzip "$work/ours.gz" "$appliance" -q cpio pack "$tree" -o "$work/ours.gz" -c gzip
time_best ours-zstd "$work/ours.zst" "$appliance" -q cpio pack "$tree" -o "$work/ours.zst" -c zstd

# Our archives must hold what the tree holds, and the standard tools must read them.
"$appliance" -q cpio fsck "$work/ours.gz" "$tree" >/dev/null
gzip -dc "$work/ours.gz" | cpio -t --quiet >/dev/null
zstd -dcq "$work/ours.zst" | cpio -t --quiet >/dev/null

printf '\ntree: %s (%d MB, %d entries), %s cores, best of %d runs\n\n' \
    "$tree" $((tree_bytes / 1000000)) "$tree_files" "$(nproc)" "$runs"
printf '%-10s %9s %13s %9s %11s\n' command "wall (s)" "size (bytes)" speedup "size ratio"
met=1
for name in gnu-gzip ours-gzip gnu-zstd ours-zstd; do
    base=gnu-${name#*-}
    time=$(cat "$work/$name.time")
    size=$(cat "$work/$name.size")
    speedup=$(awk -v a="$(cat "$work/$base.time")" -v b="$time" 'BEGIN { printf "%.3f", a / b }')
    ratio=$(awk -v a="$size" -v b="$(cat "$work/$base.size")" 'BEGIN { printf "%.4f", a / b }')
    printf '%-10s %9.2f %13d %8.2fx %11.3f\n' "$name" "$time" "$size" "$speedup" "$ratio"
    if [ "${name%%-*}" = ours ]; then
        if awk -v s="$speedup" -v r="$ratio" 'BEGIN { exit !(s < 3 || r > 1) }'; then met=0; fi
    fi
done
echo
if [ "$met" = 1 ]; then
    echo "target met: at least 3x faster than the GNU pipeline at equal or smaller size"
else
    echo "target missed: at least 3x faster than the GNU pipeline at equal or smaller size"
fi
