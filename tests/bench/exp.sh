#!/usr/bin/env bash
# Experiments benchmark: what `appliance exp run` costs beside booting the appliances.
# Not a test: it prints figures; only a failed build or batch fails it.
set -euo pipefail

usage() {
    cat <<'EOF2'
Usage: tests/bench/exp.sh [-h] [--no-build]

Runs two local sweeps under TCG (APPLIANCE_ACCEL=tcg unless set) and prints, for each:
total wall time, runs per minute, VMs at once (at most), the peak memory of one QEMU
(VmHWM, the guest's RAM it touched plus QEMU's own) and the overhead per VM against a
single `appliance run` of images/hello (VM-seconds a VM of the batch took, that is
wall x VMs at once / (runs x VMs per run), minus the wall of one `appliance run` alone):

  hello  images/hello, BENCH_HELLO_RUNS runs (default 24: 12 points x 2 repetitions)
  echo   images/echo's 2-node experiment, 3 message sizes x BENCH_ECHO_REPS (default 4)

BENCH_VMS sets the VMs at once (default: the number of cores, at least 2).
EOF2
}

bench=exp
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_args "$@"
export APPLIANCE_ACCEL=${APPLIANCE_ACCEL:-tcg}
hello_runs=${BENCH_HELLO_RUNS:-24}
echo_reps=${BENCH_ECHO_REPS:-4}
vms=${BENCH_VMS:-$(($(nproc) < 2 ? 2 : $(nproc)))}
bench_positive BENCH_HELLO_RUNS="$hello_runs" BENCH_ECHO_REPS="$echo_reps" BENCH_VMS="$vms"
bench_build
bench_tmp

now() { date +%s.%N; }

# The largest VmHWM (kB) of the QEMU processes whose command line mentions $1, sampled
# until the file $2 appears.
peak_rss() {
    local peak=0 pid kb
    while [[ ! -e $2 ]]; do
        for pid in $(pgrep -f "qemu-system.*$1" || true); do
            kb=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
            ((kb > peak)) && peak=$kb
        done
        sleep 0.5
    done
    echo "$peak"
}

# One `appliance run` of images/hello, the baseline.
say "baseline: one appliance run of images/hello"
app=$("$appliance" -q build hello -o "$tmp/hello-app")
t0=$(now)
"$appliance" -q run "$app" --timeout 300 --results "$tmp/single" --results-via serial </dev/null >/dev/null 2>&1
single=$(echo "$(now) - $t0" | bc)

# sweep NAME DIR VMS_PER_RUN: runs the experiment in DIR, prints its line.
sweep() {
    local name=$1 dir=$2 per_run=$3 done_file=$tmp/$1.done
    peak_rss "$dir" "$done_file" >"$tmp/$name.peak" &
    local sampler=$!
    local t0 out err
    t0=$(now)
    out=$("$appliance" exp run "$dir" --max-vms "$vms" 2>"$tmp/$name.err") || { cat "$tmp/$name.err" >&2; touch "$done_file"; exit 1; }
    local wall
    wall=$(echo "$(now) - $t0" | bc)
    touch "$done_file"
    wait "$sampler"
    local runs at_once peak
    runs=$(grep -o '[0-9]* run(s) ok' "$tmp/$name.err" | tail -1 | cut -d' ' -f1)
    at_once=$(grep -o '([0-9]* VM(s) at most at once)' "$tmp/$name.err" | tail -1 | tr -dc 0-9)
    peak=$(cat "$tmp/$name.peak")
    printf '%-6s %4d runs  wall %7.1f s  %6.1f runs/min  %d VM(s) at once  peak %4d MiB/VM  overhead/VM %+6.1f s (single run %.1f s)\n' \
        "$name" "$runs" "$wall" "$(echo "$runs * 60 / $wall" | bc -l)" "$at_once" "$((peak / 1024))" \
        "$(echo "$wall * $at_once / ($runs * $per_run) - $single" | bc -l)" "$single"
    echo "$out" >/dev/null
}

mkdir -p "$tmp/hello"
points=$(seq -s, 1 $((hello_runs / 2)))
cat >"$tmp/hello/experiment.toml" <<EOF2
timeout = 300
repetitions = 2
[matrix]
n = [$points]
[[node]]
image = "$root/images/hello"
args = "run {n} metric=n={n}"
memory = 192
EOF2
say "sweep: $hello_runs runs of images/hello, $vms VM(s) at once"
sweep hello "$tmp/hello" 1

mkdir -p "$tmp/echo"
sed -e "s|image = \"..\"|image = \"$root/images/echo\"|" -e "s/^repetitions = .*/repetitions = $echo_reps/" \
    -e "/^max_vms/d" images/echo/experiment/experiment.toml >"$tmp/echo/experiment.toml"
say "sweep: the 2-node echo experiment, 3 sizes x $echo_reps repetitions, $vms VM(s) at once"
sweep echo "$tmp/echo" 2
"$appliance" exp report "$tmp/echo" --plot rtt_us --x size >"$tmp/echo.report"
grep -A3 'size=16384' "$tmp/echo.report" | sed 's/^/  /'
