#!/usr/bin/env bash
# How long each way of booting an app dir takes from power-on (QEMU started) to /app/run
# (the status record's phase_start of run, polled every 20 ms), under TCG: appliance run
# (kernel given to QEMU), the disk image under OVMF, PXELINUX over QEMU's TFTP, and iPXE over
# HTTP from `appliance netboot --serve`, and kexec from a running appliance (images/kexec-boot
# booted with its kernel given, fetching the served tree over HTTP: power-on to the second
# appliance's /app/run, both boots included). The same kernel (the app dir's) for all of them.
# Median of N runs (default 3). Usage: tests/bench/deploy.sh [APP_DIR] [N]
set -euo pipefail
cd "$(dirname "$0")/../.."
A=target/release/appliance
APP=${1:-}
N=${2:-3}
T=$(mktemp -d)
SERVER=""
cleanup() { [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null; rm -rf "$T"; }
trap cleanup EXIT
if [ -z "$APP" ]; then APP=$T/hello; $A -q build images/hello -o "$APP"; fi
BOOTER=$T/kexec-boot; $A -q build images/kexec-boot -o "$BOOTER"
SOURCE_DATE_EPOCH=0 $A -q image "$APP" --format raw -o "$T/disk.raw"
$A -q netboot "$APP" -o "$T/tree"
$A netboot "$APP" -o "$T/served" --serve 127.0.0.1:0 2>"$T/serve.log" & SERVER=$!
for _ in $(seq 100); do grep -q 'point iPXE' "$T/serve.log" && break; sleep 0.1; done
PORT=$(grep -o 'http://127.0.0.1:[0-9]*' "$T/serve.log" | head -1 | cut -d: -f3)
cp /usr/share/OVMF/OVMF_VARS_4M.fd "$T/vars.fd"

COMMON=(-nodefaults -no-user-config -machine pc,accel=tcg -m 512 -display none -serial file:/dev/null -no-reboot)
# Seconds from QEMU's start to the run phase in the record written to $1 (the $RUNS-th one:
# 2 for kexec, whose record holds both appliances').
RUNS=1
to_run() {
    local status=$1; shift
    rm -f "$status"
    local start; start=$(date +%s%N)
    "$@" -serial "file:$status" </dev/null >/dev/null 2>&1 & local pid=$!
    local n=0
    until [ "$n" -ge "$RUNS" ]; do
        n=$(grep -c '"event":"phase_start".*"phase":"run"' "$status" 2>/dev/null || true); n=${n:-0}
        kill -0 "$pid" 2>/dev/null || { echo "nan"; return; }
        sleep 0.02
    done
    local now; now=$(date +%s%N)
    wait "$pid" || true
    echo "scale=2; ($now - $start) / 1000000000" | bc
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
bench() {
    local name=$1; shift
    local times=()
    for _ in $(seq "$N"); do times+=("$(to_run "$T/status" "$@")"); done
    printf '%-28s %6s s   (runs: %s)\n' "$name" "$(printf '%s\n' "${times[@]}" | median)" "${times[*]}"
}
Q=qemu-system-x86_64
echo "power-on to /app/run under TCG, median of $N ($(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg))"
bench "kernel given (appliance run)" $Q "${COMMON[@]}" -kernel "$APP/vmlinuz" -initrd "$APP/initrd" -append "$(cat "$T/tree/cmdline")"
bench "disk under OVMF" $Q "${COMMON[@]}" -drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd -drive "if=pflash,format=raw,unit=1,file=$T/vars.fd" -drive "if=virtio,format=raw,snapshot=on,file=$T/disk.raw"
bench "PXELINUX over TFTP" $Q "${COMMON[@]}" -nic "user,model=virtio-net-pci,tftp=$T/tree,bootfile=pxelinux.0" -boot n
bench "iPXE over HTTP" $Q "${COMMON[@]}" -nic "user,model=virtio-net-pci,bootfile=http://10.0.2.2:$PORT/boot.ipxe" -boot n
RUNS=2 bench "kexec from kexec-boot" $Q "${COMMON[@]}" -kernel "$BOOTER/vmlinuz" -initrd "$BOOTER/initrd" -append "console=ttyS0 panic=-1 quiet $(cat "$BOOTER/cmdline") appKexec=http://10.0.2.2:$PORT/" -nic user,model=virtio-net-pci
