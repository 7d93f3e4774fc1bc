#!/usr/bin/env bash
# Runs every cargo-fuzz (libFuzzer) target for a bounded time and prints executions and
# coverage per target. Crashes land in fuzz/artifacts/<target>/ and make the script exit 1.
#
#   bash scripts/fuzz.sh                 # 60 s per target
#   bash scripts/fuzz.sh --seconds 600   # longer
#   bash scripts/fuzz.sh --seconds 30 irc_session   # one target
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). libFuzzer needs nightly-only rustc flags;
# with only a stable toolchain the script sets RUSTC_BOOTSTRAP=1, which lets stable rustc
# accept them (set FUZZ_TOOLCHAIN=nightly to use a nightly toolchain instead). Inputs found
# go to fuzz/corpus/<target>/ (not committed); fuzz/seeds/<target>/ is the committed seed.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

if ! command -v cargo >/dev/null 2>&1 && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
    export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi

seconds=60
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds="$2"; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) targets+=("$1"); shift ;;
    esac
done
[ ${#targets[@]} -gt 0 ] || targets=(irc_codec irc_session oscar_session proxy_header config_parse)

cargo fuzz --version >/dev/null 2>&1 || { echo "fuzz.sh: cargo-fuzz is missing: cargo install cargo-fuzz" >&2; exit 1; }
if [ -n "${FUZZ_TOOLCHAIN:-}" ]; then
    fuzz=(cargo "+$FUZZ_TOOLCHAIN" fuzz)
else
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

dict_for() {
    case "$1" in
        irc_codec|irc_session) echo "-dict=irc.dict" ;;
        config_parse) echo "-dict=config.dict" ;;
        oscar_session) echo "-dict=oscar.dict" ;;
        *) echo "" ;;
    esac
}

mkdir -p logs
"${fuzz[@]}" build -O
failed=0
printf '%-14s %12s %10s %8s %8s %s\n' target executions exec/s cov ft result
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "seeds/$t"
    log="logs/$t.log"
    # -timeout: one input taking 10 s is a hang; -rss_limit_mb: a leak or blow-up is a crash.
    if "${fuzz[@]}" run -O "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        $(dict_for "$t") >"$log" 2>&1; then
        result=ok
    else
        result="CRASH (see $log, fuzz/artifacts/$t/)"
        failed=1
    fi
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')
    ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')
    printf '%-14s %12s %10s %8s %8s %s\n' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "$result"
done
exit $failed
