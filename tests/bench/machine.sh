#!/usr/bin/env bash
# Boot-time benchmark: images/hello on the project's kernel, booted on `pc`, built without
# the project's patches as before, and as `appliance run` now boots it (patched, microvm),
# in the same run on the same machine; Debian's cloud kernel for the init's share; and
# hundreds of microvm boots that count hangs. It prints figures against the targets; it is not a test, so a missed
# target does not fail it (a build that fails does). Every boot has a time bound.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: tests/bench/machine.sh [-h] [--no-build]

  1. BENCH_RUNS boots each, alternating, of images/hello on the project's kernel:
     - "pc": `--machine pc`, as `appliance run` booted before it chose machines;
     - "before": the kernel built without the project's patches (`appliance kernel
       build --no-patches`: it calibrates the APIC timer and poisons its init memory),
       on the machine `appliance run` chooses, decompressing its initrd itself
       (`--compressed-initrd`);
     - "now": what `appliance run` does by default (the patched kernel on microvm);
     guest time from kernel start to /init (the status record's `init` event), from
     /init to the start of /app/run, and the wall time of `appliance run`.
  2. BENCH_RUNS boots of images/hello on Debian's cloud kernel (pc): /init -> /app/run.
  3. BENCH_HANG_RUNS boots on microvm with a bound of BENCH_HANG_TIMEOUT s each: how many
     did not end with hello's status 0 (hangs, panics), and the slowest.
  4. With BENCH_VNG=1: `vng --exec` (virtme-ng, from PyPI) on Debian's generic 6.1 kernel,
     next to `appliance run` of images/hello on the same kernel. The first run installs
     virtme-ng into a virtual environment and unpacks the kernel package (neither is
     installed on the host) under ~/.cache/appliance/bench, and apt-installs kmod and
     busybox-static, which vng needs.

Targets (TCG): kernel start -> /init <= 400 ms and wall <= 1.0 s on the project's kernel;
/init -> /app/run <= 20 ms on Debian's cloud kernel; no hang in BENCH_HANG_RUNS boots.

Options:
  -h, --help   this text
  --no-build   use target/release and the cached kernel instead of building them

Environment:
  BENCH_RUNS          timed boots per design (default 7)
  BENCH_HANG_RUNS     boots of the hang count (default 200; 0 skips it)
  BENCH_HANG_TIMEOUT  seconds before one of them counts as hung (default 30)
  BENCH_TIMEOUT       seconds before a timed boot is killed and the benchmark fails (default 120)
  BENCH_SERIES        series of the project's kernel (default 6.1)
  BENCH_VNG           1 to compare with virtme-ng's `vng --exec` (default 0)

Progress goes to stderr, the table to stdout. Temporary files live in a mktemp directory
removed on exit.
EOF
}

bench=machine.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_args "$@"
((${#bench_rest[@]} == 0)) || { say "unknown argument: ${bench_rest[0]} (see -h)"; exit 2; }

runs=${BENCH_RUNS:-7}
hang_runs=${BENCH_HANG_RUNS:-200}
hang_timeout=${BENCH_HANG_TIMEOUT:-30}
timeout=${BENCH_TIMEOUT:-120}
series=${BENCH_SERIES:-6.1}
bench_positive "BENCH_RUNS=$runs" "BENCH_HANG_TIMEOUT=$hang_timeout" "BENCH_TIMEOUT=$timeout"
[[ $hang_runs == 0 ]] || bench_positive "BENCH_HANG_RUNS=$hang_runs"

readonly K2I_TARGET_US=400000 WALL_TARGET_US=1000000 I2R_TARGET_US=20000
# The machine every kernel booted on before microvm.
readonly PC=(--machine pc)

bench_tmp
bench_build
((build)) && say "appliance kernel build --series $series (cached after the first build)"
kernel=$("$appliance" kernel build --series "$series")
say "appliance kernel build --series $series --no-patches (cached after the first build)"
stock=$("$appliance" kernel build --series "$series" --no-patches)
say "building images/hello on the project's kernel, unpatched and patched, and on Debian's"
"$appliance" build -q --kernel "$kernel" -o "$tmp/ours" images/hello > /dev/null
"$appliance" build -q --kernel "$stock" -o "$tmp/stock" images/hello > /dev/null
"$appliance" build -q -o "$tmp/debian" images/hello > /dev/null

# boot NAME APPDIR [ARGS...]: one timed run; appends to NAME_{k2i,i2r,wall}.
boot() {
    local name=$1 dir=$2
    shift 2
    local status=$tmp/$name.status.jsonl log=$tmp/$name.console.log
    local start=$EPOCHREALTIME rc=0
    "$appliance" run "$dir" --accel tcg --timeout "$timeout" --status "$status" "$@" \
        < /dev/null > "$log" 2>&1 || rc=$?
    local end=$EPOCHREALTIME t_init t_run
    t_init=$(event_t_us "$status" init)
    t_run=$(event_t_us "$status" phase_start run)
    if ((rc != 0)) || [[ -z $t_init || -z $t_run ]]; then
        say "$name: appliance run exited with $rc; init=${t_init:-missing}, run=${t_run:-missing}. Console:"
        tail -n 30 "$log" >&2
        exit 1
    fi
    eval "${name}_k2i+=($t_init) ${name}_i2r+=($((t_run - t_init))) ${name}_wall+=($((${end/./} - ${start/./})))"
}

pc_k2i=() pc_i2r=() pc_wall=() before_k2i=() before_i2r=() before_wall=() now_k2i=() now_i2r=() now_wall=()
debian_k2i=() debian_i2r=() debian_wall=()
for ((i = 1; i <= runs; i++)); do
    say "run $i/$runs: pc"
    boot pc "$tmp/ours" "${PC[@]}"
    say "run $i/$runs: before (unpatched)"
    boot before "$tmp/stock" --compressed-initrd
    say "run $i/$runs: now ($("$appliance" run "$tmp/ours" --accel tcg --dry-run | grep -o 'microvm\|-machine pc' | head -n 1))"
    boot now "$tmp/ours"
    say "run $i/$runs: Debian's cloud kernel"
    boot debian "$tmp/debian"
done

# --- guest time under icount ------------------------------------------------------------------
# With -icount shift=0,sleep=off the guest's clock advances 1 ns per instruction and skips
# idle time to the next timer: the boot's guest time no longer depends on the host's load,
# so these figures compare designs even on a busy machine (waits for timers still count).
icount() {
    local status=$tmp/icount.status.jsonl
    "$appliance" run "$@" --accel tcg --timeout "$timeout" --status "$status" \
        --qemu-arg=-icount --qemu-arg=shift=0,sleep=off < /dev/null > "$tmp/icount.log" 2>&1 ||
        { say "icount boot failed: $*"; tail -n 20 "$tmp/icount.log" >&2; exit 1; }
    echo "$(event_t_us "$status" init) $(event_t_us "$status" phase_start run)"
}
say "one boot of each under -icount"
read -r pc_icount_init pc_icount_run <<< "$(icount "$tmp/ours" --machine pc)"
read -r before_icount_init before_icount_run <<< "$(icount "$tmp/stock" --machine microvm --compressed-initrd)"
read -r now_icount_init now_icount_run <<< "$(icount "$tmp/ours" --machine microvm)"
read -r debian_icount_init debian_icount_run <<< "$(icount "$tmp/debian" --machine pc)"

# --- hangs --------------------------------------------------------------------------------------
failed=0 slowest=0
for ((i = 1; i <= hang_runs; i++)); do
    ((i % 20 == 1)) && say "hang count: boot $i/$hang_runs"
    start=$EPOCHREALTIME rc=0
    "$appliance" run "$tmp/ours" --accel tcg --timeout "$hang_timeout" --stop-grace 5 \
        < /dev/null > "$tmp/hang.log" 2>&1 || rc=$?
    us=$((${EPOCHREALTIME/./} - ${start/./}))
    ((us > slowest)) && slowest=$us
    if ((rc != 0)); then
        failed=$((failed + 1))
        cp "$tmp/hang.log" "$tmp/hang-$i.log"
        say "boot $i ended with $rc (124: not done in ${hang_timeout} s):"
        tail -n 15 "$tmp/hang.log" >&2
    fi
done

# --- virtme-ng ----------------------------------------------------------------------------------
# vng from PyPI in a virtual environment, and Debian's generic 6.1 kernel unpacked (not
# installed): both under ~/.cache/appliance/bench, made once. vng also needs depmod (kmod)
# and busybox for its initramfs, installed with apt.
vng_wall="" vng_ours_wall="" vng_kernel="" vng_ok=""
setup_vng() {
    local cache=${XDG_CACHE_HOME:-$HOME/.cache}/appliance/bench pkg
    mkdir -p "$cache"
    if [[ ! -x $cache/vng-venv/bin/vng ]]; then
        say "installing virtme-ng from PyPI into $cache/vng-venv"
        python3 -m venv "$cache/vng-venv" && "$cache/vng-venv/bin/pip" install -q virtme-ng || return 1
    fi
    command -v depmod > /dev/null && command -v busybox > /dev/null ||
        apt-get install -y -q kmod busybox-static > /dev/null || return 1
    vng_kernel=$(ls "$cache"/generic/boot/vmlinuz-* 2> /dev/null | tail -n 1)
    if [[ -z $vng_kernel ]]; then
        pkg=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' | cut -d' ' -f1 | sort -V | tail -n 1)
        [[ -n $pkg ]] || { say "no linux-image-6.1.0-*-amd64 in apt's lists"; return 1; }
        say "unpacking $pkg into $cache/generic"
        (cd "$cache" && apt-get download -q "$pkg" > /dev/null 2>&1 && dpkg -x "$pkg"_*.deb generic && rm -f "$pkg"_*.deb) ||
            return 1
        vng_kernel=$(ls "$cache"/generic/boot/vmlinuz-* | tail -n 1)
    fi
    PATH=$cache/vng-venv/bin:$PATH
}
if [[ ${BENCH_VNG:-0} == 1 ]]; then
    if setup_vng; then
        say "vng --exec on $vng_kernel"
        start=$EPOCHREALTIME
        # vng's exit status is not the command's when it falls back to the console (no
        # virtio-serial script ports on this kernel): the marker on its output is the proof.
        timeout 600 vng --verbose --run "$vng_kernel" --disable-kvm --exec "echo vng-ran-it" < /dev/null > "$tmp/vng.log" 2>&1 || true
        vng_wall=$((${EPOCHREALTIME/./} - ${start/./}))
        grep -q '^vng-ran-it' "$tmp/vng.log" && vng_ok=1 || { say "vng did not run the command:"; tail -n 20 "$tmp/vng.log" >&2; }
        start=$EPOCHREALTIME
        "$appliance" run "$tmp/debian" --kernel "$vng_kernel" --accel tcg --timeout "$timeout" \
            < /dev/null > "$tmp/vng-ours.log" 2>&1 || say "appliance run on $vng_kernel failed"
        vng_ours_wall=$((${EPOCHREALTIME/./} - ${start/./}))
    else
        say "BENCH_VNG=1, but virtme-ng or Debian's generic kernel could not be set up: no comparison"
    fi
fi

# --- the table ----------------------------------------------------------------------------------
ms() { read -r m lo hi <<< "$(stats "$@")"; awk -v a="$m" -v b="$lo" -v c="$hi" 'BEGIN { printf "%.0f ms (%.0f-%.0f)", a / 1e3, b / 1e3, c / 1e3 }'; }
secs() { read -r m lo hi <<< "$(stats "$@")"; awk -v a="$m" -v b="$lo" -v c="$hi" 'BEGIN { printf "%.2f s (%.2f-%.2f)", a / 1e6, b / 1e6, c / 1e6 }'; }
row() { printf '%-28s | %-22s | %-22s | %-22s | %-22s | %s\n' "$@"; }

printf '\nBoot benchmark: images/hello, %s boots each, alternating; TCG; QEMU %s\n' "$runs" \
    "$(qemu-system-x86_64 --version | head -n 1 | sed 's/.*version \([^ ]*\).*/\1/')"
printf 'median (min-max); guest times are CLOCK_BOOTTIME from the status record\n\n'
row "" "pc, $series" "before: unpatched $series" "now: default, $series" "Debian cloud (pc)" "target / result"
row "kernel start -> /init" "$(ms "${pc_k2i[@]}")" "$(ms "${before_k2i[@]}")" "$(ms "${now_k2i[@]}")" "$(ms "${debian_k2i[@]}")" \
    "<= 400 ms: $(verdict "$(median "${now_k2i[@]}") <= $K2I_TARGET_US")"
row "/init -> start of /app/run" "$(ms "${pc_i2r[@]}")" "$(ms "${before_i2r[@]}")" "$(ms "${now_i2r[@]}")" "$(ms "${debian_i2r[@]}")" \
    "<= 20 ms on Debian's: $(verdict "$(median "${debian_i2r[@]}") <= $I2R_TARGET_US")"
row "appliance run, wall" "$(secs "${pc_wall[@]}")" "$(secs "${before_wall[@]}")" "$(secs "${now_wall[@]}")" "$(secs "${debian_wall[@]}")" \
    "<= 1.0 s: $(verdict "$(median "${now_wall[@]}") <= $WALL_TARGET_US")"
icount_ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f ms + %.2f ms", a / 1e3, (b - a) / 1e3 }'; }
row "icount: to /init + to run" "$(icount_ms "$pc_icount_init" "$pc_icount_run")" \
    "$(icount_ms "$before_icount_init" "$before_icount_run")" \
    "$(icount_ms "$now_icount_init" "$now_icount_run")" "$(icount_ms "$debian_icount_init" "$debian_icount_run")" \
    "load-independent"
echo
if ((hang_runs > 0)); then
    printf 'hangs: %d of %d boots on the default machine did not end with status 0 within %d s (slowest %.2f s): %s\n' \
        "$failed" "$hang_runs" "$hang_timeout" "$(awk -v a="$slowest" 'BEGIN { print a / 1e6 }')" \
        "$(verdict "$failed == 0")"
fi
if [[ -n $vng_ok ]]; then
    printf 'vng --exec on %s: %.2f s; appliance run images/hello on the same kernel: %.2f s (%.1fx)\n' \
        "$vng_kernel" "$(awk -v a="$vng_wall" 'BEGIN { print a / 1e6 }')" \
        "$(awk -v a="$vng_ours_wall" 'BEGIN { print a / 1e6 }')" \
        "$(awk -v a="$vng_wall" -v b="$vng_ours_wall" 'BEGIN { print a / b }')"
fi
