#!/usr/bin/env bash
# Publish benchmark: `appliance publish` and `appliance pull` of images/bash-tools against
# Debian's docker-registry on 127.0.0.1, and what publishing and updating an almost
# unchanged app dir transfers. It prints figures and whether the targets are met; it is
# not a test, so a missed target does not fail it (only a failed command does).
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: tests/bench/publish.sh [-h] [--no-build]

Builds images/bash-tools, starts docker-registry on a free port of 127.0.0.1 with its
storage in a temporary directory, makes keys, then measures BENCH_RUNS times each (a new
repository each run) and prints the best wall time and the bytes moved:

  publish      the app dir as 1.0 into an empty repository
  pull         1.0 into a new app dir (metadata verified, every blob downloaded)
  republish    the same app dir with one word added to its cmdline, as 1.1
  update       the pulled app dir from 1.0 to 1.1

Bytes pushed are the growth of the registry's storage (blobs, manifests, metadata) in
the first run, into an empty registry; bytes pulled are what `appliance pull`/`update`
report downloading.

Targets: the republish stores at most 1% of what the first publish stored (blobs the
registry has are not sent again); the update downloads only the changed file.

Options:
  -h, --help   this text
  --no-build   use target/release/appliance as it is instead of running cargo

Environment:
  BENCH_RUNS     runs, the best time counts (default 3)
  BENCH_TIMEOUT  seconds before one command is killed and the benchmark fails (default 300)

Progress goes to stderr, the table to stdout; temporary files live in a mktemp
directory removed on exit (the registry is stopped then too).
EOF
}

bench=publish.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_args "$@"
((${#bench_rest[@]} == 0)) || { say "unknown argument: ${bench_rest[0]} (see -h)"; exit 2; }

runs=${BENCH_RUNS:-3}
limit=${BENCH_TIMEOUT:-300}
bench_positive "BENCH_RUNS=$runs" "BENCH_TIMEOUT=$limit"
registry_bin=/usr/bin/docker-registry
[[ -x $registry_bin ]] || { say "$registry_bin is missing (host-tools/deps.sh installs docker-registry)"; exit 2; }
command -v curl >/dev/null || { say "curl is missing"; exit 2; }

bench_build
bench_tmp
registry_pid=
trap 'if [[ -n $registry_pid ]]; then kill "$registry_pid" 2>/dev/null; wait "$registry_pid" 2>/dev/null || true; fi; rm -rf "$tmp"' EXIT

say "building images/bash-tools"
"$appliance" -q build images/bash-tools -o "$tmp/app" >/dev/null
app_bytes=$(du -cbL "$tmp"/app/{vmlinuz,initrd,cmdline,appliance.json} | tail -1 | cut -f1)

# A free port: nothing accepts a connection on it.
port=
for _ in $(seq 100); do
    candidate=$((20000 + RANDOM % 20000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then port=$candidate; break; fi
done
[[ -n $port ]] || { say "no free port found"; exit 1; }
storage=$tmp/storage
mkdir -p "$storage"
cat >"$tmp/registry.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $storage
http:
  addr: 127.0.0.1:$port
EOF
"$registry_bin" serve "$tmp/registry.yml" >"$tmp/registry.log" 2>&1 &
registry_pid=$!
ready=0
for _ in $(seq 300); do
    if curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null 2>&1; then ready=1; break; fi
    kill -0 "$registry_pid" 2>/dev/null || { say "docker-registry exited: $(cat "$tmp/registry.log")"; exit 1; }
    sleep 0.1
done
((ready)) || { say "docker-registry did not answer /v2/ within 30 s"; exit 1; }
"$appliance" -q keys init "$tmp/keys" >/dev/null
export XDG_STATE_HOME=$tmp/state

# Bytes in the storage's files (directories and their sizes left out).
stored() { find "$storage" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }'; }
# timed NAME COMMAND...: runs COMMAND, appends its wall time to $tmp/NAME.times, its
# stderr to $tmp/NAME.log.
timed() {
    local name=$1 start end
    shift
    start=$(date +%s.%N)
    if ! timeout "$limit" "$@" 2>"$tmp/$name.log" >/dev/null; then
        say "$name failed or took longer than ${limit}s: $(cat "$tmp/$name.log")"
        exit 1
    fi
    end=$(date +%s.%N)
    awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f\n", b - a }' >>"$tmp/$name.times"
}
# The size in parentheses at the end of the last "pulled"/"updated" line.
reported() { grep -E '(pulled|updated from)' "$tmp/$1.log" | tail -1 | sed -E 's/.*\(([^)]*)\).*/\1/'; }

cp -rL "$tmp/app" "$tmp/app2"
echo "bench.version=2" >>"$tmp/app2/cmdline"
for run in $(seq "$runs"); do
    repo=127.0.0.1:$port/bench/run$run
    say "run $run of $runs"
    s0=$(stored)
    timed publish "$appliance" publish "$tmp/app" "$repo:1.0" --keys "$tmp/keys"
    s1=$(stored)
    timed pull "$appliance" pull "$repo:1.0" -o "$tmp/pulled$run" --root-key "$tmp/keys/root.pub"
    timed republish "$appliance" publish "$tmp/app2" "$repo:1.1" --keys "$tmp/keys"
    s2=$(stored)
    timed update "$appliance" update "$tmp/pulled$run"
    # The registry keeps one copy of a blob for all repositories: only the first run,
    # into an empty registry, shows what a publish stores.
    if ((run == 1)); then
        echo $((s1 - s0)) >"$tmp/publish.bytes"
        echo $((s2 - s1)) >"$tmp/republish.bytes"
    fi
done
cmp -s "$tmp/app2/initrd" "$tmp/pulled1/initrd" || { say "the updated app dir differs from what was published"; exit 1; }

best() { sort -n "$tmp/$1.times" | head -1; }
printf '\napp dir: images/bash-tools, %d bytes (vmlinuz, initrd, cmdline, appliance.json); %s cores, best of %d runs\n\n' \
    "$app_bytes" "$(nproc)" "$runs"
printf '%-10s %9s  %s\n' step "wall (s)" "bytes moved"
printf '%-10s %9.2f  %d stored in the registry\n' publish "$(best publish)" "$(cat "$tmp/publish.bytes")"
printf '%-10s %9.2f  %s downloaded\n' pull "$(best pull)" "$(reported pull)"
printf '%-10s %9.2f  %d stored in the registry\n' republish "$(best republish)" "$(cat "$tmp/republish.bytes")"
printf '%-10s %9.2f  %s downloaded\n' update "$(best update)" "$(reported update)"
echo
first=$(cat "$tmp/publish.bytes")
again=$(cat "$tmp/republish.bytes")
cmdline_bytes=$(stat -c %s "$tmp/app2/cmdline")
if ((again * 100 <= first)); then
    echo "target met: the republish stored $again bytes, at most 1% of the first publish's $first"
else
    echo "target missed: the republish stored $again bytes, more than 1% of the first publish's $first"
fi
if [[ $(reported update) == "$cmdline_bytes B" ]]; then
    echo "target met: the update downloaded only the changed cmdline ($cmdline_bytes bytes)"
else
    echo "target missed: the update downloaded $(reported update), not only the changed cmdline ($cmdline_bytes bytes)"
fi
