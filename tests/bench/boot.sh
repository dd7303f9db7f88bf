#!/usr/bin/env bash
# Boot benchmark: appliance-init against the original design (a bash /init), on the same
# kernel, the same QEMU command line and the same /app/run (the static appliance-hello).
# It prints figures and whether the project's targets are met; it is not a test, so a
# missed target does not fail it (only a failed build or boot does).
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: tests/bench/boot.sh [-h] [--no-build]

Boots images/hello (PID 1 = appliance-init) and a baseline built from the same parts
whose PID 1 is the original bash /init (tests/bench/bash-init/init, started with
rdinit=/bash-init), BENCH_RUNS times each, alternately, and prints a table:

  - size of the init binary (stripped), next to quoted sizes of tini-static and
    virtme-ng-init;
  - guest time from kernel start to /init and from /init to the start of /app/run
    (CLOCK_BOOTTIME, from the status record on ttyS1; median, min and max);
  - wall time of `appliance run` on the host (median);
  - compressed size of both initrds (zstd, the same level) and their ratio.

Targets: init binary <= 700 KiB stripped; /init -> /app/run at least 10x faster than
the bash /init; the hello initrd at most 1/4 of the bash design's.

Options:
  -h, --help   this text
  --no-build   use the binaries already in target/release instead of running cargo

Environment:
  BENCH_RUNS     boots per design (default 5)
  BENCH_TIMEOUT  seconds before a boot is killed and the benchmark fails (default 120)
  BENCH_ACCEL    accelerator for `appliance run --accel` (default tcg: the figures are
                 meant to be comparable between machines; auto uses KVM when it works)

Progress goes to stderr, the table to stdout. Run from anywhere inside the checkout;
temporary files live in a mktemp directory removed on exit.
EOF
}

bench=boot.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_args "$@"
((${#bench_rest[@]} == 0)) || { say "unknown argument: ${bench_rest[0]} (see -h)"; exit 2; }

runs=${BENCH_RUNS:-5}
timeout=${BENCH_TIMEOUT:-120}
accel=${BENCH_ACCEL:-tcg}
bench_positive "BENCH_RUNS=$runs" "BENCH_TIMEOUT=$timeout"

# Sizes of other inits, quoted for context as given to us; not measured here.
readonly TINI_STATIC_QUOTE="708 KB"
readonly VIRTME_NG_INIT_QUOTE="1.7 MB"
# Targets.
readonly INIT_MAX_BYTES=$((700 * 1024))
readonly SPEEDUP_MIN=10
readonly INITRD_RATIO_MIN=4
# The kernel runs this instead of /init in the baseline (the builder reserves /init).
readonly BASH_INIT_PATH=/bash-init
# What the bash /init uses, copied from the host with their libraries and loader.
readonly BASH_HOST_FILES=(/bin/bash /usr/bin/mount /usr/bin/mkdir /usr/bin/ln /usr/bin/mknod /usr/bin/sleep)

bench_tmp
bench_build
init=$root/target/release/appliance-init
hello=$root/target/release/appliance-hello
for f in "$appliance" "$init" "$hello"; do
    [[ -x $f ]] || { say "$f is missing: run without --no-build"; exit 1; }
done
for f in "${BASH_HOST_FILES[@]}"; do
    [[ -x $f ]] || { say "$f is missing on this host: the bash baseline needs it"; exit 1; }
done

# --- 1. the init binary, stripped ------------------------------------------------------
# The release profile strips already; strip a copy anyway so the figure never depends on
# that setting.
if command -v strip > /dev/null; then
    strip -o "$tmp/appliance-init" "$init"
    init_bytes=$(stat -c %s "$tmp/appliance-init")
else
    say "no strip(1): reporting the size of the binary as built (release builds are stripped)"
    init_bytes=$(stat -c %s "$init")
fi

# --- the two app dirs --------------------------------------------------------------------
say "building images/hello"
"$appliance" build -q --compression zstd -o "$tmp/hello" images/hello > /dev/null
kernel=$tmp/hello/vmlinuz

# The baseline: the same /app/run and app parameters, the bash init at /bash-init. The
# builder always puts an /init in the archive; a copy of the static appliance-hello
# stands in for it (never executed, and a duplicate of /app/run, so the compressor
# stores it almost for free), so that appliance-init's bytes do not count for the bash
# design.
mkdir "$tmp/bash-image"
cp tests/bench/bash-init/init "$tmp/bash-image/bash-init"
{
    echo 'description = "Boot benchmark baseline: the original bash /init (rdinit=/bash-init)"'
    echo 'compression = "zstd"'
    printf 'host_files = ['
    printf '"%s", ' "${BASH_HOST_FILES[@]}"
    echo ']'
    echo '[programs]'
    echo '"/app/run" = "appliance-hello"'
    echo '[files]'
    echo "\"$BASH_INIT_PATH\" = \"bash-init\""
} > "$tmp/bash-image/appliance.toml"
say "building the bash /init baseline"
APPLIANCE_INIT=$hello "$appliance" build -q --compression zstd --kernel "$kernel" \
    -o "$tmp/bash" "$tmp/bash-image" > /dev/null
cp "$tmp/hello/cmdline" "$tmp/bash/cmdline"

hello_initrd_bytes=$(stat -c %s "$tmp/hello/initrd")
bash_initrd_bytes=$(stat -c %s "$tmp/bash/initrd")

# --- 2. and 3. boots ---------------------------------------------------------------------

# boot NAME APPDIR [EXTRA KERNEL WORDS...]: one run; appends to NAME_{k2i,i2r,wall}.
boot() {
    local name=$1 dir=$2
    shift 2
    local status=$tmp/$name.status.jsonl log=$tmp/$name.console.log extra=()
    (($#)) && extra=(-- "$@")
    local start=$EPOCHREALTIME rc=0
    "$appliance" run "$dir" --kernel "$kernel" --accel "$accel" --timeout "$timeout" \
        --status "$status" "${extra[@]}" < /dev/null > "$log" 2>&1 || rc=$?
    local end=$EPOCHREALTIME
    local t_init t_run
    t_init=$(event_t_us "$status" init)
    t_run=$(event_t_us "$status" phase_start run)
    if ((rc != 0)) || [[ -z $t_init || -z $t_run ]]; then
        say "$name: appliance run exited with $rc (124: timed out after ${timeout} s);" \
            "status record: init=${t_init:-missing}, run start=${t_run:-missing}. Console:"
        tail -n 30 "$log" >&2
        exit 1
    fi
    local wall_us=$(((${end/./} - ${start/./})))
    eval "${name}_k2i+=($t_init) ${name}_i2r+=($((t_run - t_init))) ${name}_wall+=($wall_us)"
}

hello_k2i=() hello_i2r=() hello_wall=()
bash_k2i=() bash_i2r=() bash_wall=()
# Alternate the designs, so that a change in the load of the (shared) host during the
# benchmark affects both alike.
for ((i = 1; i <= runs; i++)); do
    say "run $i/$runs: appliance-init"
    boot hello "$tmp/hello"
    say "run $i/$runs: bash /init"
    boot bash "$tmp/bash" "rdinit=$BASH_INIT_PATH"
done
bash_clock=$(sed -n 's/.*"event":"init".*"clock":"\([a-z_]*\)".*/\1/p' "$tmp/bash.status.jsonl" | head -n 1)

# --- 4. the table --------------------------------------------------------------------------
ms() { awk -v a="$1" -v b="$2" -v c="$3" 'BEGIN { printf "%.1f ms (%.1f-%.1f)", a / 1e3, b / 1e3, c / 1e3 }'; }
secs() { awk -v a="$1" -v b="$2" -v c="$3" 'BEGIN { printf "%.2f s (%.2f-%.2f)", a / 1e6, b / 1e6, c / 1e6 }'; }
kib() { awk -v b="$1" 'BEGIN { printf "%.1f KiB", b / 1024 }'; }

read -r hk2i hk2i_min hk2i_max <<< "$(stats "${hello_k2i[@]}")"
read -r bk2i bk2i_min bk2i_max <<< "$(stats "${bash_k2i[@]}")"
read -r hi2r hi2r_min hi2r_max <<< "$(stats "${hello_i2r[@]}")"
read -r bi2r bi2r_min bi2r_max <<< "$(stats "${bash_i2r[@]}")"
read -r hwall hwall_min hwall_max <<< "$(stats "${hello_wall[@]}")"
read -r bwall bwall_min bwall_max <<< "$(stats "${bash_wall[@]}")"
speedup=$(awk -v b="$bi2r" -v h="$hi2r" 'BEGIN { printf "%.1f", (h > 0 ? b / h : 0) }')
initrd_ratio=$(awk -v b="$bash_initrd_bytes" -v h="$hello_initrd_bytes" 'BEGIN { printf "%.1f", b / h }')
bash_bytes=$(stat -L -c %s /bin/bash)

row() { printf '%-36s | %-29s | %-29s | %-18s | %s\n' "$@"; }
kernel_version=$(sed -n 's/.*"kernel_version": *"\([^"]*\)".*/\1/p' "$tmp/hello/appliance.json")
echo "Boot benchmark: $runs runs per design, alternating; QEMU accel=$accel; kernel ${kernel_version:-$(basename "$kernel")};"
echo "times are medians (min-max); guest times are CLOCK_BOOTTIME from the status record on ttyS1."
echo
row "" "appliance-init (images/hello)" "bash /init (original design)" "target" "result"
row "$(printf -- '-%.0s' {1..36})" "$(printf -- '-%.0s' {1..29})" "$(printf -- '-%.0s' {1..29})" "$(printf -- '-%.0s' {1..18})" "-------"
row "init binary, stripped" "$(kib "$init_bytes") ($init_bytes B)" "bash $(kib "$bash_bytes") + libs" "<= 700 KiB" \
    "$(verdict "$init_bytes <= $INIT_MAX_BYTES")"
row "  for context: tini-static" "$TINI_STATIC_QUOTE (quoted)" "" "" "not measured"
row "  for context: virtme-ng-init" "$VIRTME_NG_INIT_QUOTE (quoted)" "" "" "not measured"
row "kernel start -> /init" "$(ms "$hk2i" "$hk2i_min" "$hk2i_max")" "$(ms "$bk2i" "$bk2i_min" "$bk2i_max")" "" ""
row "/init -> start of /app/run" "$(ms "$hi2r" "$hi2r_min" "$hi2r_max")" "$(ms "$bi2r" "$bi2r_min" "$bi2r_max")" \
    ">= ${SPEEDUP_MIN}x faster" "$(verdict "$speedup >= $SPEEDUP_MIN") (${speedup}x)"
row "wall time of appliance run" "$(secs "$hwall" "$hwall_min" "$hwall_max")" "$(secs "$bwall" "$bwall_min" "$bwall_max")" "" ""
row "initrd (zstd, same level)" "$(kib "$hello_initrd_bytes") ($hello_initrd_bytes B)" \
    "$(kib "$bash_initrd_bytes") ($bash_initrd_bytes B)" "<= 1/${INITRD_RATIO_MIN} of bash's" \
    "$(verdict "$hello_initrd_bytes * $INITRD_RATIO_MIN <= $bash_initrd_bytes") (1/${initrd_ratio})"
echo
echo "Notes: the bash /init is tests/bench/bash-init/init; its initrd holds ${BASH_HOST_FILES[*]}"
echo "with their libraries, the same /app/run, and a copy of appliance-hello as the unused /init."
if [[ $bash_clock != timer_list ]]; then
    echo "The bash /init's times come from ${bash_clock:-an unknown clock} (10 ms resolution): /proc/timer_list was missing."
fi
