#!/usr/bin/env bash
# The init's share of a boot: appliance-init as built from this checkout against the one of
# an earlier commit, on the same kernel, image and QEMU command line, boots alternating.
# It prints figures against the target; it is not a test, so a missed target does not fail
# it (a failed build or boot does).
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: tests/bench/init.sh [-h] [--no-build] [REV]

Builds appliance-init from commit REV (default HEAD: what the working tree changes) into a
temporary directory, builds images/hello twice on the same kernel (Debian's cloud kernel,
the image's default: the kernel of the init's target) with APPLIANCE_INIT set to each
init, boots them BENCH_RUNS times each, alternately, and prints a table:

  - guest time from /init to the start of /app/run (CLOCK_BOOTTIME, the status record's
    `init` and `phase_start` events): median (min-max);
  - guest time from /init to the `end` event (hello has run, and the power goes off);
  - the wall time of `appliance run`;
  - the size of each init binary.

Target (TCG): /init -> /app/run <= 20 ms on Debian's cloud kernel.

Options:
  -h, --help   this text
  --no-build   use target/release for this checkout's side instead of building it
               (REV's init is always built)

Environment:
  BENCH_RUNS     boots per init (default 9)
  BENCH_TIMEOUT  seconds before a boot is killed and the benchmark fails (default 120)

Progress goes to stderr, the table to stdout. Temporary files live in a mktemp directory
removed on exit.
EOF
}

bench=init.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_args "$@"
((${#bench_rest[@]} <= 1)) || { say "one REV at most, not: ${bench_rest[*]} (see -h)"; exit 2; }
rev=${bench_rest[0]:-HEAD}
runs=${BENCH_RUNS:-9}
timeout=${BENCH_TIMEOUT:-120}
bench_positive "BENCH_RUNS=$runs" "BENCH_TIMEOUT=$timeout"
readonly I2R_TARGET_US=20000

commit=$(git rev-parse --verify --quiet "$rev^{commit}") || { say "$rev is not a commit of this repository"; exit 2; }
short=$(git rev-parse --short "$commit")
bench_tmp
bench_build
say "building appliance-init at $short (git archive into $tmp/src)"
mkdir -p "$tmp/src"
git archive "$commit" | tar -x -C "$tmp/src"
cargo build --release --quiet --manifest-path "$tmp/src/init/Cargo.toml" --target-dir "$tmp/target"
then_init=$tmp/target/release/appliance-init
now_init=$root/target/release/appliance-init
say "building images/hello with each init"
APPLIANCE_INIT=$then_init "$appliance" build -q -o "$tmp/then" images/hello > /dev/null
APPLIANCE_INIT=$now_init "$appliance" build -q -o "$tmp/now" images/hello > /dev/null

# boot NAME: one timed run of $tmp/NAME; appends to NAME_{i2r,end,wall}.
boot() {
    local name=$1 status=$tmp/$1.status.jsonl log=$tmp/$1.console.log rc=0
    local start=$EPOCHREALTIME
    "$appliance" run "$tmp/$name" --accel tcg --timeout "$timeout" --status "$status" < /dev/null > "$log" 2>&1 || rc=$?
    local wall=$((${EPOCHREALTIME/./} - ${start/./})) t_init t_run t_end
    t_init=$(event_t_us "$status" init)
    t_run=$(event_t_us "$status" phase_start run)
    t_end=$(event_t_us "$status" end)
    if ((rc != 0)) || [[ -z $t_init || -z $t_run || -z $t_end ]]; then
        say "$name: appliance run exited with $rc; init=${t_init:-missing} run=${t_run:-missing} end=${t_end:-missing}. Console:"
        tail -n 30 "$log" >&2
        exit 1
    fi
    eval "${name}_i2r+=($((t_run - t_init))) ${name}_end+=($((t_end - t_init))) ${name}_wall+=($wall)"
}

then_i2r=() then_end=() then_wall=() now_i2r=() now_end=() now_wall=()
for ((i = 1; i <= runs; i++)); do
    say "run $i/$runs"
    boot then
    boot now
done

ms() { read -r m lo hi <<< "$(stats "$@")"; awk -v a="$m" -v b="$lo" -v c="$hi" 'BEGIN { printf "%.1f ms (%.1f-%.1f)", a / 1e3, b / 1e3, c / 1e3 }'; }
secs() { read -r m lo hi <<< "$(stats "$@")"; awk -v a="$m" -v b="$lo" -v c="$hi" 'BEGIN { printf "%.2f s (%.2f-%.2f)", a / 1e6, b / 1e6, c / 1e6 }'; }
row() { printf '%-26s | %-24s | %-24s | %s\n' "$@"; }

printf '\nThe init'"'"'s share: images/hello on Debian'"'"'s cloud kernel, %s boots each, alternating; TCG\n' "$runs"
printf 'median (min-max); guest times are CLOCK_BOOTTIME from the status record\n\n'
row "" "init of $short" "init of this checkout" "target"
row "---" "---" "---" "---"
row "/init -> start of /app/run" "$(ms "${then_i2r[@]}")" "$(ms "${now_i2r[@]}")" \
    "<= 20 ms: $(verdict "$(median "${now_i2r[@]}") <= $I2R_TARGET_US")"
row "/init -> end event" "$(ms "${then_end[@]}")" "$(ms "${now_end[@]}")" ""
row "appliance run, wall" "$(secs "${then_wall[@]}")" "$(secs "${now_wall[@]}")" ""
row "init binary" "$(stat -c %s "$then_init") bytes" "$(stat -c %s "$now_init") bytes" ""
