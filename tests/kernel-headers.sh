#!/usr/bin/env bash
# The kernel-headers path end to end, on 5.10: builds the 5.10 kernel with module support
# and its headers (`appliance kernel build --series 5.10 --headers`: a second compile of
# 5.10, with the modules fragment, besides the one tests/kernel.rs makes; Debian's
# linux-source-5.10 is fetched from bullseye if needed), builds the image in
# tests/headers/ (kernel = "build:5.10", kernel_headers = true, gcc 12 and make from the
# host), boots it, and checks that the module it compiled against its own headers was
# loaded. Not part of `cargo test` nor of CI: the compile takes tens of minutes on 2
# cores (see the README).
#
# Usage: tests/kernel-headers.sh        (from anywhere; as root, like the other tests)
# Exit status 0 when the module was built and loaded inside the appliance.
set -euo pipefail
cd "$(dirname "$0")/.."
. host-tools/deps.sh
appliance_install_deps
appliance_build_release
appliance=target/release/appliance
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "== kernel-headers: 5.10 with modules and headers (cached after the first run)" >&2
"$appliance" kernel build --series 5.10 --headers >/dev/null
echo "== kernel-headers: the image" >&2
"$appliance" build tests/headers -o "$tmp/app"
echo "== kernel-headers: the module is built and loaded inside the appliance" >&2
status=0
# A compile under TCG: give it memory and time. --kernel-log: the module's own message
# (pr_info) is below the console level of a quiet boot.
APPLIANCE_ACCEL=${APPLIANCE_ACCEL:-tcg} "$appliance" run "$tmp/app" -m 1024 --timeout 1800 --kernel-log \
    | tee "$tmp/console" || status=$?
if [ "$status" -ne 0 ] || ! grep -q '^module built and loaded on 5\.10\.' "$tmp/console" \
    || ! grep -q 'appliance_hello: loaded into 5\.10\.' "$tmp/console"; then
    echo "== kernel-headers: FAILED (exit status $status)" >&2
    exit 1
fi
echo "== kernel-headers: passed" >&2
