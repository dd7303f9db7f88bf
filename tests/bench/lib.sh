# Sourced by the benchmark scripts in this directory: what they all do before measuring.
# The caller sets `bench` (its name, for messages) before sourcing.
#   bench_args "$@"        -h/--help (calls the caller's `usage`), --no-build; sets `build`
#                          and leaves other arguments in `bench_rest`
#   bench_positive N=V...  each V must be a positive integer, else exit 2 naming N
#   bench_build [host]     cargo build --release of the host CLI (and the init, unless `host`)
#   bench_tmp              a mktemp directory in `tmp`, removed on exit
#   event_t_us FILE KIND [PHASE]  t_us of the first status event of KIND (and PHASE)
#   stats N...             "median min max" of integers; median N...: the median alone
#   verdict EXPR           "met" when the awk expression EXPR holds, else "NOT MET"
# It also sets `root` (the checkout's top, and the working directory) and `appliance`.

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
appliance=$root/target/release/appliance

say() { echo "$bench: $*" >&2; }

bench_args() {
    build=1
    bench_rest=()
    while (($#)); do
        case $1 in
            -h | --help) usage; exit 0 ;;
            --no-build) build=0 ;;
            -*) say "unknown option $1 (see -h)"; exit 2 ;;
            *) bench_rest+=("$1") ;;
        esac
        shift
    done
}

bench_positive() {
    local setting
    for setting in "$@"; do
        if ! [[ ${setting#*=} =~ ^[1-9][0-9]*$ ]]; then
            say "${setting%%=*} must be a positive integer, not '${setting#*=}'"
            exit 2
        fi
    done
}

bench_build() {
    if ((build)); then
        say "building the tools (cargo build --release)"
        cargo build --release --quiet -p appliance-host
        [[ ${1:-} == host ]] || cargo build --release --quiet --manifest-path init/Cargo.toml --target-dir target
    fi
    [[ -x $appliance ]] || { say "$appliance is missing: run without --no-build"; exit 1; }
}

bench_tmp() {
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/appliance-$bench.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
}

# t_us of the first status event of kind $2 (and phase $3) in file $1, or nothing.
event_t_us() {
    local line
    [[ -f $1 ]] || return 0
    while IFS= read -r line; do
        [[ $line == *\"event\":\"$2\"* ]] || continue
        [[ -z ${3-} || $line == *\"phase\":\"$3\"* ]] || continue
        if [[ $line =~ \"t_us\":([0-9]+) ]]; then
            echo "${BASH_REMATCH[1]}"
            return
        fi
    done < "$1"
}

# "median min max" of integer arguments.
stats() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END {
    m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    print m, v[1], v[NR] }'; }
median() { stats "$@" | cut -d' ' -f1; }

verdict() { if awk "BEGIN { exit !($1) }" < /dev/null; then echo "met"; else echo "NOT MET"; fi; }
