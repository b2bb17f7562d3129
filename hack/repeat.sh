#!/usr/bin/env bash
# Runs the tests of a container's own memory limit in a gVisor pod again and
# again (issue 20: they must pass on the guarantee, not on luck), and stops at
# the first failure.
#
# usage: hack/repeat.sh [N]      (N: rounds, default $OOMGUARD_REPEAT or 20)
#
# Each round runs, in one cargo test invocation each:
#   cri    cri::containerd_1_7::runsc_container_limits, cri::containerd_2::...
#          (CRI pods: bursts of 68, 80 and 300 MiB against B's own 64 MiB)
#   runsc  runsc::containerd_{1_7,2}_runsc_20240729::own_memory_limits_in_a_pod
#          (ctr pods: 300 MiB in one read(), an exec over A's limit)
# Prints one line per round and test, and a summary; writes both to
# .cache/repeat/results.md. Exit status 1 at the first failing round (its
# output is kept in .cache/repeat/round-K-TEST.log).
set -euo pipefail
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N=${1:-${OOMGUARD_REPEAT:-20}}
[[ $N =~ ^[1-9][0-9]*$ ]] || die "N must be a positive integer (got '$N')"
need_root

OUT="$CACHE/repeat"
mkdir -p "$OUT"
rm -f "$OUT"/round-*.log
CARGO=${CARGO:-cargo}

declare -A FILTER=(
	[cri]="--test cri runsc_container_limits -- --skip unenforced"
	[runsc]="--test runsc runsc_20240729::own_memory_limits_in_a_pod --"
)
TESTS=(cri runsc)

cd "$REPO"
"$CARGO" test -p oomguard-integration --no-run --test cri --test runsc >/dev/null 2>&1 ||
	die "the integration tests do not build (cargo test -p oomguard-integration --no-run)"

report="$OUT/results.md"
{
	printf '# hack/repeat.sh: %s rounds (%s)\n\n' "$N" "$(date -u +%FT%TZ)"
	printf '| round | test | result | seconds |\n| ---: | --- | --- | ---: |\n'
} >"$report"
passed=0
for ((k = 1; k <= N; k++)); do
	for t in "${TESTS[@]}"; do
		log="$OUT/round-$k-$t.log"
		t0=${EPOCHREALTIME//[.,]/}
		# shellcheck disable=SC2086 # FILTER holds several words on purpose
		if "$CARGO" test -p oomguard-integration ${FILTER[$t]} --test-threads=2 >"$log" 2>&1; then
			result=ok
		else
			result=FAILED
		fi
		t1=${EPOCHREALTIME//[.,]/}
		secs=$(awk -v d=$((t1 - t0)) 'BEGIN { printf "%.1f", d / 1e6 }')
		ran=$(grep -cE '^test .* \.\.\. ok$' "$log" || true)
		printf '| %d | %s (%s tests) | %s | %s |\n' "$k" "$t" "$ran" "$result" "$secs" | tee -a "$report"
		if [[ $result != ok ]]; then
			printf '\nround %d of %d failed (%s); output: %s\n' "$k" "$N" "$t" "${log#"$REPO"/}" | tee -a "$report"
			grep -E '^test .*FAILED|panicked' "$log" | head -20 >&2 || true
			exit 1
		fi
		[[ $ran -gt 0 ]] || die "round $k: $t ran no test (filter: ${FILTER[$t]})"
		rm -f "$log"
	done
	passed=$k
done
printf '\n%d of %d rounds passed, every test in each.\n' "$passed" "$N" | tee -a "$report"
