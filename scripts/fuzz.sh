#!/usr/bin/env bash
# Runs every proptest `fuzz_*` case in the workspace (the parsers of outside input: callbacks,
# API answers, statements, amounts) for longer than CI does; CI runs the same cases with
# proptest's default 256 cases each as part of the normal test run. Usage:
#   bash scripts/fuzz.sh            20000 cases per fuzz case
#   bash scripts/fuzz.sh 100000     that many cases per fuzz case
#   bash scripts/fuzz.sh 600s       rounds of FUZZ_ROUND_CASES (default 5000) cases per fuzz case,
#                                   each round with fresh random seeds, until 600 s have passed
# The crates are the ones whose sources hold a `fn fuzz_`, so a new case anywhere is picked up.
# A failure stops the run: proptest prints the shrunk input and records its seed under the
# crate's proptest-regressions/; copy it into a named #[test] next to the case (see
# channels/wechat/src/adapter/tests/fuzz.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '==> %s\n' "$*" >&2; }

arg=${1:-20000}
if ! [[ $arg =~ ^[1-9][0-9]*s?$ ]]; then
    echo "usage: $0 [CASES | SECONDSs]" >&2
    exit 2
fi

# The package of each file with a fuzz case: the nearest Cargo.toml above it.
packages=()
while IFS= read -r file; do
    dir=$(dirname "$file")
    while [ ! -f "$dir/Cargo.toml" ]; do dir=$(dirname "$dir"); done
    packages+=("$(sed -n 's/^name = "\(.*\)"$/\1/p' "$dir/Cargo.toml" | head -n 1)")
done < <(grep -rlE --include='*.rs' '\bfn fuzz_' channels server tests proto 2>/dev/null)
mapfile -t packages < <(printf '%s\n' "${packages[@]}" | sort -u)
[ ${#packages[@]} -gt 0 ] || { echo "no fuzz_ cases found" >&2; exit 1; }
pkg_args=()
for p in "${packages[@]}"; do pkg_args+=(-p "$p"); done
log "fuzz cases in: ${packages[*]}"

# Test names are `…::fuzz_<what>`.
filter='test(/(^|::)fuzz_/)'
run_round() {
    local cases=$1
    if command -v cargo-nextest >/dev/null; then
        PROPTEST_CASES=$cases cargo nextest run "${pkg_args[@]}" -E "$filter" --no-fail-fast
    else
        PROPTEST_CASES=$cases cargo test "${pkg_args[@]}" -- fuzz_
    fi
}

# Build first, so a time budget is spent fuzzing.
if command -v cargo-nextest >/dev/null; then
    cargo nextest run "${pkg_args[@]}" -E "$filter" --no-run
else
    cargo test "${pkg_args[@]}" --no-run
fi

case "$arg" in
    *s)
        seconds=${arg%s}
        round=${FUZZ_ROUND_CASES:-5000}
        start=$SECONDS
        n=0
        while [ $((SECONDS - start)) -lt "$seconds" ]; do
            n=$((n + 1))
            log "round $n: $round cases per fuzz case ($((SECONDS - start)) of ${seconds} s spent)"
            run_round "$round"
        done
        log "no failure in $n rounds of $round cases per fuzz case ($((SECONDS - start)) s)"
        ;;
    *)
        log "$arg cases per fuzz case"
        run_round "$arg"
        log "no failure in $arg cases per fuzz case"
        ;;
esac
