#!/usr/bin/env bash
# The floor under /init -> /app/run: what the kernel work appliance-init does before it
# starts /app/run costs by itself, measured with a PID 1 that does only that work
# (tests/bench/floor/init.c), step by step, beside appliance-init on the same kernel, image
# and QEMU command line. It prints figures against the target; it is not a test, so a
# missed target does not fail it (a failed build or boot does).
set -euo pipefail

usage() {
    cat <<'EOF_USAGE'
Usage: tests/bench/floor.sh [-h] [--no-build]

Compiles tests/bench/floor/init.c (cc -static), builds images/hello twice on Debian's
cloud kernel (the image's default), once with appliance-init and once with the probe as
/init (APPLIANCE_INIT), and boots BENCH_RUNS rounds, each round every column once:

  - the probe with no step: the timestamps alone;
  - the probe with the mounts appliance-init makes, in its order and with its options;
  - the probe with the loopback interface brought up alone;
  - the probe with both;
  - the probe with both and /proc/cmdline read: the kernel work appliance-init does
    before /app/run;
  - appliance-init itself, booting images/hello.

It prints guest time from /init to the start of /app/run (CLOCK_BOOTTIME from the status
record; the probe writes the same events) for each: median (min-max).

Target (TCG): /init -> /app/run <= 20 ms on Debian's cloud kernel.

Options:
  -h, --help   this text
  --no-build   use target/release instead of building the tools

Environment:
  BENCH_RUNS     rounds (default 7)
  BENCH_TIMEOUT  seconds before a boot is killed and the benchmark fails (default 120)
  CC             the C compiler (default cc)

Progress goes to stderr, the table to stdout. Temporary files live in a mktemp directory
removed on exit.
EOF_USAGE
}

bench=floor.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_args "$@"
((${#bench_rest[@]} == 0)) || { say "unknown argument: ${bench_rest[0]} (see -h)"; exit 2; }
runs=${BENCH_RUNS:-7}
timeout=${BENCH_TIMEOUT:-120}
cc=${CC:-cc}
bench_positive "BENCH_RUNS=$runs" "BENCH_TIMEOUT=$timeout"
readonly I2R_TARGET_US=20000
# Column names and the probe's steps (the kernel word floor=STEPS); "init" is appliance-init.
readonly COLUMNS=(none mounts lo mounts_lo kernel_work init)
declare -A STEPS=([none]="" [mounts]=mounts [lo]=lo [mounts_lo]=mounts,lo [kernel_work]=mounts,lo,cmdline)
declare -A LABEL=(
    [none]="the probe: no step"
    [mounts]="the probe: the mounts"
    [lo]="the probe: loopback up"
    [mounts_lo]="the probe: mounts, loopback"
    [kernel_work]="the probe: mounts, loopback, /proc/cmdline"
    [init]="appliance-init"
)

command -v "$cc" > /dev/null || { say "no C compiler '$cc': install gcc (apt-get install gcc libc6-dev) or set CC"; exit 1; }
bench_tmp
bench_build
say "compiling the probe ($cc -O2 -static tests/bench/floor/init.c)"
"$cc" -O2 -static -Wall -Wextra -Werror -o "$tmp/probe" tests/bench/floor/init.c
say "building images/hello with appliance-init and with the probe as /init"
"$appliance" build -q -o "$tmp/init" images/hello > /dev/null
APPLIANCE_INIT=$tmp/probe "$appliance" build -q -o "$tmp/probe-app" images/hello > /dev/null

# boot COLUMN: one timed run; appends to COLUMN's list of /init -> /app/run.
declare -A I2R
boot() {
    local column=$1 status=$tmp/$1.status.jsonl log=$tmp/$1.console.log rc=0 t_init t_run
    local dir=$tmp/probe-app extra=(-- "floor=${STEPS[$column]-}")
    [[ $column == init ]] && { dir=$tmp/init; extra=(); }
    rm -f "$status"
    "$appliance" run "$dir" --accel tcg --timeout "$timeout" --status "$status" "${extra[@]}" \
        < /dev/null > "$log" 2>&1 || rc=$?
    t_init=$(event_t_us "$status" init)
    t_run=$(event_t_us "$status" phase_start run)
    if ((rc != 0)) || [[ -z $t_init || -z $t_run ]]; then
        say "$column: appliance run exited with $rc; init=${t_init:-missing} run=${t_run:-missing}. Console:"
        tail -n 30 "$log" >&2
        exit 1
    fi
    I2R[$column]+=" $((t_run - t_init))"
}

for ((i = 1; i <= runs; i++)); do
    say "round $i/$runs"
    for column in "${COLUMNS[@]}"; do boot "$column"; done
done

ms() { read -r m lo hi <<< "$(stats "$@")"; awk -v a="$m" -v b="$lo" -v c="$hi" 'BEGIN { printf "%.1f ms (%.1f-%.1f)", a / 1e3, b / 1e3, c / 1e3 }'; }
row() { printf '%-44s | %-24s | %s\n' "$@"; }

printf '\nThe floor under /init -> /app/run: images/hello on Debian'"'"'s cloud kernel, %s rounds; TCG\n' "$runs"
printf 'median (min-max); CLOCK_BOOTTIME from the status record\n\n'
row "PID 1" "/init -> start of /app/run" "target <= 20 ms"
row "---" "---" "---"
for column in "${COLUMNS[@]}"; do
    # shellcheck disable=SC2086 # the list is space-separated integers
    row "${LABEL[$column]}" "$(ms ${I2R[$column]})" "$(verdict "$(median ${I2R[$column]}) <= $I2R_TARGET_US")"
done
