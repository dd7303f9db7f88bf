#!/usr/bin/env bash
# Size benchmark: a bash+coreutils appliance whose files were chosen by tracing, against
# the reference root it was taken from (the host's /). It prints figures and whether the
# target is met; it is not a test, so a missed target does not fail it (only a failed
# build does).
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: tests/bench/trace-size.sh [-h] [--no-build]

Builds a bash+coreutils appliance with [trace] (root = "/", the host): a bash script that
runs 30 coreutils programs is traced, and only the files it touched (plus the ELF
libraries of every traced program, minus locales, docs, caches and logs) are packed.
Then prints, side by side:

  - the traced appliance's initrd: compressed (zstd -19, as `appliance build` writes it),
    uncompressed, entries;
  - the same programs chosen by hand (images/bash-tools: host_files with the libraries
    from the ELF headers), for comparison;
  - the full Debian packages those files come from (bash, coreutils, libc6 and the
    package of each library the trace kept), all their files packed the same way
    (cpio newc | zstd -19): what copying the packages instead of tracing would give;
  - the reference root itself: `du --apparent-size` of /usr and of / (one file system).

Target: the traced appliance under 5 MB compressed (kernel not counted).

Options:
  -h, --help   this text
  --no-build   use the binaries already in target/release instead of running cargo

Run as root (the tracer chroots when the root is not /; with / it only needs ptrace).
Progress goes to stderr, the table to stdout. Temporary files live in a mktemp
directory removed on exit.
EOF
}

bench=trace-size
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_args "$@"
((${#bench_rest[@]} == 0)) || { say "unknown argument: ${bench_rest[0]} (see -h)"; exit 2; }
top=$root
bench_build
bench_tmp
work=$tmp

programs="cat cp cut date echo env expr false head id ln ls mkdir mv printf rm seq sleep sort sync tail test touch tr true uname wc md5sum basename dirname"
mkdir -p "$work/image/app"
cat >"$work/image/app/run" <<EOF
#!/bin/bash
# Exercises bash and the coreutils of the benchmark once each.
set -e
cd /tmp
for p in $programs; do command -v "\$p" >/dev/null; done
echo hello >a; cat a; cp a b; mv b c; cut -c1-3 c; date -u; echo x; env >/dev/null
expr 1 + 1; false || true; head -n1 a; id -u; ln -s a d; ls -l /; mkdir -p e/f
printf '%s\n' p; rm -f c d; seq 3; sleep 0; sort a; sync; tail -n1 a; test -e a
touch g; tr a-z A-Z <a; true; uname -a; wc -l a; md5sum a; basename /x/y; dirname /x/y
EOF
chmod +x "$work/image/app/run"
cat >"$work/image/appliance.toml" <<EOF
description = "bash and coreutils, chosen by tracing"
compression = "zstd"
[trace]
root = "/"
commands = ["mkdir -p /tmp/trace-size && cd /tmp/trace-size && bash $work/image/app/run"]
EOF

echo "trace-size: building the traced appliance" >&2
"$appliance" -q build "$work/image" -o "$work/traced" >/dev/null
echo "trace-size: building images/bash-tools" >&2
"$appliance" -q build images/bash-tools -o "$work/bash-tools" >/dev/null

json() { sed -n "s/^ *\"$2\": \\([0-9]*\\),\$/\\1/p" "$1/appliance.json"; }
traced_size=$(json "$work/traced" initrd_size)
traced_raw=$(json "$work/traced" initrd_uncompressed_size)
traced_entries=$(json "$work/traced" entries)
hand_size=$(json "$work/bash-tools" initrd_size)
hand_raw=$(json "$work/bash-tools" initrd_uncompressed_size)
hand_entries=$(json "$work/bash-tools" entries)

# The packages the traced files come from: bash, coreutils, libc6 and the owner of each
# packed library.
zstd -dc "$work/traced/initrd" | (cd "$work" && cpio -t --quiet) >"$work/members"
packages="bash coreutils libc6"
while read -r member; do
    case "$member" in
        *.so | *.so.*)
            # dpkg knows merged-/usr files by their pre-merge names (/lib/...).
            owner=$( (dpkg -S "/$member" || dpkg -S "/${member#usr/}") 2>/dev/null | head -n1 | cut -d: -f1) || true
            [ -n "$owner" ] && packages="$packages $owner"
            ;;
    esac
done <"$work/members"
packages=$(printf '%s\n' $packages | sort -u | tr '\n' ' ')
echo "trace-size: packing the files of: $packages" >&2
# shellcheck disable=SC2086
dpkg -L $packages | sort -u | while read -r path; do
    [ -f "$path" ] && [ ! -L "$path" ] && printf '%s\n' "${path#/}"
done >"$work/package-files"
package_raw=$(cd / && cpio -o -H newc --quiet <"$work/package-files" | wc -c)
package_size=$(cd / && cpio -o -H newc --quiet <"$work/package-files" | zstd -q -19 -T0 -c | wc -c)
package_files=$(wc -l <"$work/package-files")

echo "trace-size: measuring the reference root (du)" >&2
usr_bytes=$(du -sx --apparent-size -B1 /usr 2>/dev/null | cut -f1)
root_bytes=$(du -sx --apparent-size -B1 / 2>/dev/null | cut -f1 || true)

mib() { awk -v b="$1" 'BEGIN { printf "%.2f MiB", b / 1048576 }'; }
printf '\n%-58s %14s %14s %9s\n' "what" "compressed" "uncompressed" "entries"
printf '%-58s %14s %14s %9s\n' "traced bash+coreutils appliance (initrd, zstd -19)" \
    "$(mib "$traced_size")" "$(mib "$traced_raw")" "$traced_entries"
printf '%-58s %14s %14s %9s\n' "images/bash-tools, chosen by hand (initrd, zstd -19)" \
    "$(mib "$hand_size")" "$(mib "$hand_raw")" "$hand_entries"
printf '%-58s %14s %14s %9s\n' "their packages, every file (cpio | zstd -19)" \
    "$(mib "$package_size")" "$(mib "$package_raw")" "$package_files"
printf '%-58s %14s %14s %9s\n' "reference root: /usr (du --apparent-size)" "-" "$(mib "$usr_bytes")" "-"
printf '%-58s %14s %14s %9s\n' "reference root: / on one file system (du --apparent-size)" "-" \
    "$(mib "${root_bytes:-0}")" "-"
printf '\npackages: %s\n' "$packages"
limit=$((5 * 1000 * 1000))
if [ "$traced_size" -lt "$limit" ]; then verdict=met; else verdict=MISSED; fi
printf 'target: traced appliance under 5 MB compressed: %s (%s bytes)\n' "$verdict" "$traced_size"
