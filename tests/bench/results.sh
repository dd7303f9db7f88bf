#!/usr/bin/env bash
# Results benchmark: what the results step (appResultsTo) adds at the end of a run:
# mount, copy with fsync, unmount, for 1 MiB and 100 MiB of results, over NFS (the
# nfs-ganesha `appliance run --results` starts on the host's loopback, reached through
# QEMU's user networking), over virtio 9p, and as a cpio stream over a virtio-serial port
# (unpacked by `appliance run` once the VM has ended); and the packets the control NIC saw
# during /app/run (the proof the network stayed quiet). Not a test: it prints figures;
# only a failed build, boot or results step fails it.
set -euo pipefail

usage() {
    cat <<'EOF2'
Usage: tests/bench/results.sh [-h] [--no-build]

Builds a small bash image whose /app/run writes N MiB of random data into $APP_RESULTS,
then boots it with `appliance run --results DIR` (--results-via nfs, 9p, serial) for
N = 1 and 100, BENCH_RUNS times each, and prints per case the median of the guest's
own timings from the status record (`results` event): mount (serial: finding and
opening the port), copy (with an fsync per file and a syncfs; serial: writing the
stream), unmount and their sum; `added`, from the end of /app/run to the end of the
step (includes bringing the network up by DHCP for NFS); the throughput of the copy;
`host_ms`, what `appliance run` spends after the VM ended to unpack the stream (serial
only); and the packets on the control NIC during /app/run (`run_traffic` event; NFS
only, 9p and serial have no NIC).

All transports boot the project's kernel (--kernel build:6.1, built on demand and
cached): it has virtio-net, NFSv4, 9p and virtio's console built in, so all are measured
on one kernel (Debian's cloud kernel has no 9p). NFS needs root and nfs-ganesha
(host-tools/deps.sh).

Options:
  -h, --help   this text
  --no-build   use the binaries already in target/release instead of running cargo

Environment:
  BENCH_RUNS     boots per case (default 3)
  BENCH_TIMEOUT  seconds before a boot is killed and the benchmark fails (default 300)
  BENCH_ACCEL    accelerator for `appliance run --accel` (default tcg)
  BENCH_SIZES    sizes in MiB (default "1 100")

Progress goes to stderr, the table to stdout. Temporary files live in a mktemp
directory removed on exit.
EOF2
}

bench=results.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_args "$@"
((${#bench_rest[@]} == 0)) || { say "unknown argument: ${bench_rest[0]} (see -h)"; exit 2; }

runs=${BENCH_RUNS:-3}
timeout=${BENCH_TIMEOUT:-300}
accel=${BENCH_ACCEL:-tcg}
sizes=${BENCH_SIZES:-1 100}
bench_positive "BENCH_RUNS=$runs" "BENCH_TIMEOUT=$timeout"
for size in $sizes; do bench_positive "BENCH_SIZES=$size"; done
bench_build
bench_tmp
work=$tmp

mkdir -p "$work/image/app"
cat >"$work/image/appliance.toml" <<'EOF2'
description = "results benchmark"
host_files = ["/bin/bash", "/usr/bin/head", "/usr/bin/mkdir"]
EOF2
cat >"$work/image/app/run" <<'EOF2'
#!/bin/bash
mkdir -p "$APP_RESULTS"
head -c "$(( $1 * 1048576 ))" /dev/urandom > "$APP_RESULTS/data.bin"
EOF2
chmod +x "$work/image/app/run"
"$appliance" -q build "$work/image" -o "$work/app" >/dev/null

# A number field of the status record's `results` or `run_traffic` line.
field() { sed -n "s/.*\"$2\":\([0-9]*\).*/\1/p" <<<"$1"; }
median() { sort -n | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]; else print "-"}'; }

printf '%-6s %8s %10s %10s %10s %10s %10s %10s %8s %12s\n' via size mount_ms copy_ms umount_ms total_ms added_ms \
    MiB/s host_ms run_packets
for size in $sizes; do
    for via in nfs 9p serial; do
        : >"$work/rows"
        for ((i = 1; i <= runs; i++)); do
            say "$via, $size MiB, run $i/$runs"
            rm -rf "$work/out" && mkdir "$work/out"
            status=$work/status.jsonl
            if ! timeout $((timeout + 30)) "$appliance" run "$work/app" --kernel build:6.1 --accel "$accel" \
                -m $((256 + 2 * size)) --timeout "$timeout" --status "$status" \
                --results "$work/out" --results-via "$via" --args "$size" >"$work/console" 2>&1; then
                say "the run failed:"
                tail -n 20 "$work/console" >&2
                exit 1
            fi
            line=$(grep '"event":"results"' "$status")
            traffic=$(grep '"event":"run_traffic"' "$status" || true)
            mount=$(field "$line" mount_us) copy=$(field "$line" copy_us) umount=$(field "$line" umount_us)
            run_end=$(field "$(grep '"event":"phase_end".*"phase":"run"' "$status")" t_us)
            added=$(($(field "$line" t_us) - run_end))
            packets=-
            if [ -n "$traffic" ]; then
                # tx+rx packets after minus before: the fields appear in order before, after.
                mapfile -t pk < <(grep -o '"[rt]x_packets":[0-9]*' <<<"$traffic" | cut -d: -f2)
                packets=$((pk[2] - pk[0] + pk[3] - pk[1]))
            fi
            # The unpacking of the stream: "unpacking N ms" in appliance's summary.
            host=$(sed -n 's/.*unpacking \([0-9]*\) ms.*/\1/p' "$work/console")
            echo "$mount $copy $umount $packets $added ${host:--}" >>"$work/rows"
        done
        m=$(cut -d' ' -f1 "$work/rows" | median)
        c=$(cut -d' ' -f2 "$work/rows" | median)
        u=$(cut -d' ' -f3 "$work/rows" | median)
        a=$(cut -d' ' -f5 "$work/rows" | median)
        p=$(cut -d' ' -f4 "$work/rows" | sort -u | tr '\n' ' ')
        h=$(cut -d' ' -f6 "$work/rows" | median)
        [ "$via" = serial ] || h=-
        printf '%-6s %6sMiB %10.1f %10.1f %10.1f %10.1f %10.1f %10.1f %8s %12s\n' "$via" "$size" \
            "$(bc -l <<<"$m/1000")" "$(bc -l <<<"$c/1000")" "$(bc -l <<<"$u/1000")" \
            "$(bc -l <<<"($m+$c+$u)/1000")" "$(bc -l <<<"$a/1000")" "$(bc -l <<<"$size/($c/1000000)")" "$h" "$p"
    done
done
echo "(medians of $runs run(s); guest CLOCK_BOOTTIME; accel $accel; kernel build:6.1)"
