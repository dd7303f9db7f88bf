#!/usr/bin/env bash
# Kernel benchmark: the project's own kernel (`appliance kernel build`, base fragment over
# tinyconfig) against Debian's cloud kernel, on the same appliance (images/hello), the same
# QEMU command line and the same accelerator. It prints figures and whether the targets
# are met; it is not a test, so a missed target does not fail it (only a failed build or
# boot does). Every boot has a time bound.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: tests/bench/kernel.sh [-h] [--no-build]

Boots images/hello BENCH_RUNS times on each kernel, alternately, and prints:

  - the size of each bzImage (and of the project's uncompressed vmlinux);
  - guest time from kernel start to /init (the `init` event's t_us in the status record,
    CLOCK_BOOTTIME; median, min and max) and the wall time of `appliance run`;
  - the project's kernel booted as bzImage and as vmlinux through PVH (no decompression);
  - the least memory (-m, MiB) each kernel boots hello with, bisected with short boots.

Targets: the project's bzImage at most 2.5 MB, reaching /init in at most half the time of
Debian's cloud kernel, booting in 64 MiB.

Options:
  -h, --help   this text
  --no-build   use the binaries in target/release and the cached kernel (fails when the
               kernel was never built) instead of running cargo and `appliance kernel build`

Environment:
  BENCH_RUNS         boots per kernel (default 5)
  BENCH_TIMEOUT      seconds before a timed boot is killed and the benchmark fails (default 120)
  BENCH_MEM_TIMEOUT  seconds per boot of the memory bisection; a boot killed then counts as
                     "does not boot" (default 60)
  BENCH_ACCEL        accelerator (default tcg: comparable between machines)
  BENCH_SERIES       series of the project's kernel (default 6.1)

Progress goes to stderr, the table to stdout. Temporary files live in a mktemp directory
removed on exit.
EOF
}

bench=kernel.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_args "$@"
((${#bench_rest[@]} == 0)) || { say "unknown argument: ${bench_rest[0]} (see -h)"; exit 2; }

runs=${BENCH_RUNS:-5}
timeout=${BENCH_TIMEOUT:-120}
mem_timeout=${BENCH_MEM_TIMEOUT:-60}
accel=${BENCH_ACCEL:-tcg}
series=${BENCH_SERIES:-6.1}
bench_positive "BENCH_RUNS=$runs" "BENCH_TIMEOUT=$timeout" "BENCH_MEM_TIMEOUT=$mem_timeout"

readonly SIZE_MAX_BYTES=2500000
readonly MEMORY_TARGET_MIB=64
# The bisection's bounds: below 16 MiB nothing boots, 512 MiB is what `appliance run` gives.
readonly MEM_LOW=16 MEM_HIGH=512

bench_tmp
bench_build

# --- the kernels ----------------------------------------------------------------------------
if ((build)); then
    say "appliance kernel build --series $series (cached after the first build)"
fi
# Without --no-build this compiles when needed; with it, a missing kernel fails here too
# (the build of a cached kernel is a lookup).
ours=$("$appliance" kernel build --series "$series")
[[ -f $ours ]] || { say "no kernel at '$ours'"; exit 1; }
ours_vmlinux=$(dirname "$ours")/vmlinux

say "building images/hello (Debian's cloud kernel comes with it)"
"$appliance" build -q -o "$tmp/hello" images/hello > /dev/null
debian=$tmp/hello/vmlinuz

# --- boots ----------------------------------------------------------------------------------
# t_us of the first `init` event in a status file, or nothing.
init_t_us() {
    [[ -f $1 ]] || return 0
    sed -n 's/.*"event":"init".*"t_us":\([0-9]*\).*/\1/p; s/.*"t_us":\([0-9]*\).*"event":"init".*/\1/p' "$1" | head -n 1
}

# run_once KERNEL MEMORY TIMEOUT STATUS LOG: one boot of hello; the exit status of
# `appliance run` (0: hello ran and reported 0).
run_once() {
    local rc=0
    "$appliance" run "$tmp/hello" --kernel "$1" -m "$2" --accel "$accel" --timeout "$3" \
        --status "$4" < /dev/null > "$5" 2>&1 || rc=$?
    return $rc
}

# boot NAME KERNEL: one timed run; appends to NAME_k2i and NAME_wall (microseconds).
boot() {
    local name=$1 kernel=$2
    local status=$tmp/$name.status.jsonl log=$tmp/$name.console.log
    local start=$EPOCHREALTIME rc=0
    run_once "$kernel" 512 "$timeout" "$status" "$log" || rc=$?
    local end=$EPOCHREALTIME
    local t_init
    t_init=$(init_t_us "$status")
    if ((rc != 0)) || [[ -z $t_init ]]; then
        say "$name: appliance run exited with $rc (124: timed out after ${timeout} s); init=${t_init:-missing}. Console:"
        tail -n 30 "$log" >&2
        exit 1
    fi
    eval "${name}_k2i+=($t_init) ${name}_wall+=($((${end/./} - ${start/./})))"
}

debian_k2i=() debian_wall=() ours_k2i=() ours_wall=() pvh_k2i=() pvh_wall=()
for ((i = 1; i <= runs; i++)); do
    say "run $i/$runs: Debian's cloud kernel"
    boot debian "$debian"
    say "run $i/$runs: the project's bzImage"
    boot ours "$ours"
    say "run $i/$runs: the project's vmlinux through PVH"
    boot pvh "$ours_vmlinux"
done

# least_memory KERNEL: the least -m (MiB) hello boots and exits 0 with, by bisection
# between MEM_LOW and MEM_HIGH; "none" when it does not boot with MEM_HIGH.
least_memory() {
    local kernel=$1 low=$MEM_LOW high=$MEM_HIGH mid
    if ! run_once "$kernel" "$high" "$mem_timeout" "$tmp/mem.status" "$tmp/mem.log"; then
        echo none
        return
    fi
    # Invariant: boots with $high, does not with $low (nothing boots in MEM_LOW).
    while ((high - low > 1)); do
        mid=$(((low + high) / 2))
        if run_once "$kernel" "$mid" "$mem_timeout" "$tmp/mem.status" "$tmp/mem.log"; then
            high=$mid
        else
            low=$mid
        fi
        say "  -m $mid: $( ((high == mid)) && echo boots || echo fails)"
    done
    echo "$high"
}
say "bisecting the least memory: Debian's cloud kernel"
debian_mem=$(least_memory "$debian")
say "bisecting the least memory: the project's bzImage"
ours_mem=$(least_memory "$ours")

# --- the table --------------------------------------------------------------------------------
ms() { awk -v a="$1" -v b="$2" -v c="$3" 'BEGIN { printf "%.0f ms (%.0f-%.0f)", a / 1e3, b / 1e3, c / 1e3 }'; }
secs() { awk -v a="$1" 'BEGIN { printf "%.2f s", a / 1e6 }'; }
mb() { awk -v b="$1" 'BEGIN { printf "%.2f MB", b / 1e6 }'; }

read -r dk2i dk2i_min dk2i_max <<< "$(stats "${debian_k2i[@]}")"
read -r ok2i ok2i_min ok2i_max <<< "$(stats "${ours_k2i[@]}")"
read -r pk2i pk2i_min pk2i_max <<< "$(stats "${pvh_k2i[@]}")"
read -r dwall _ _ <<< "$(stats "${debian_wall[@]}")"
read -r owall _ _ <<< "$(stats "${ours_wall[@]}")"
read -r pwall _ _ <<< "$(stats "${pvh_wall[@]}")"
debian_bytes=$(stat -L -c %s "$debian")
ours_bytes=$(stat -c %s "$ours")
vmlinux_bytes=$(stat -c %s "$ours_vmlinux")
debian_release=$(file -bL "$debian" 2> /dev/null | sed -n 's/.*version \([^ ]*\).*/\1/p')
ours_release=$(file -b "$ours" 2> /dev/null | sed -n 's/.*version \([^ ]*\).*/\1/p')

printf '\nKernel benchmark: images/hello, %s boots per kernel, accel %s, QEMU pc machine, -m 512\n\n' "$runs" "$accel"
printf '%-30s %-22s %-22s %-22s\n' "" "Debian cloud" "project bzImage" "project vmlinux (PVH)"
printf '%-30s %-22s %-22s %-22s\n' "release" "${debian_release:-?}" "${ours_release:-?}" "${ours_release:-?}"
printf '%-30s %-22s %-22s %-22s\n' "kernel file" "$(mb "$debian_bytes")" "$(mb "$ours_bytes")" "$(mb "$vmlinux_bytes")"
printf '%-30s %-22s %-22s %-22s\n' "kernel start -> /init" "$(ms "$dk2i" "$dk2i_min" "$dk2i_max")" \
    "$(ms "$ok2i" "$ok2i_min" "$ok2i_max")" "$(ms "$pk2i" "$pk2i_min" "$pk2i_max")"
printf '%-30s %-22s %-22s %-22s\n' "appliance run, wall (median)" "$(secs "$dwall")" "$(secs "$owall")" "$(secs "$pwall")"
printf '%-30s %-22s %-22s %-22s\n' "least -m that boots (MiB)" "$debian_mem" "$ours_mem" "-"
printf '\n'
printf 'target: bzImage <= 2.5 MB: %s (%s)\n' "$(verdict "$ours_bytes <= $SIZE_MAX_BYTES")" "$(mb "$ours_bytes")"
printf 'target: /init in at most half of Debian'"'"'s time: %s (%.2fx faster)\n' \
    "$(verdict "$ok2i * 2 <= $dk2i")" "$(awk -v a="$dk2i" -v b="$ok2i" 'BEGIN { print a / b }')"
if [[ $ours_mem == none ]]; then
    printf 'target: boots in %s MiB: NOT MET (does not boot even in %s MiB)\n' "$MEMORY_TARGET_MIB" "$MEM_HIGH"
else
    printf 'target: boots in %s MiB: %s (least %s MiB)\n' "$MEMORY_TARGET_MIB" \
        "$(verdict "$ours_mem <= $MEMORY_TARGET_MIB")" "$ours_mem"
fi
# The guest clock starts after the bzImage decompressed itself, so decompression shows in
# the wall time only: the difference between the bzImage and PVH columns.
printf 'bzImage decompression (wall, bzImage - PVH): %s\n' \
    "$(awk -v a="$owall" -v b="$pwall" 'BEGIN { printf "%.2f s", (a - b) / 1e6 }')"
