# shellcheck shell=bash
# Shared helpers for the hack/ scripts. Source it; do not run it.
#
# Sets REPO (the repository root, from this file's location) and CACHE
# ($REPO/.cache), and defines small helpers used by every script.

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
CACHE="$REPO/.cache"
: "${OOMGUARD_LOG_PREFIX:=$(basename "$0")}"

die() {
	printf '%s: error: %s\n' "$OOMGUARD_LOG_PREFIX" "$*" >&2
	exit 1
}

warn() {
	printf '%s: warning: %s\n' "$OOMGUARD_LOG_PREFIX" "$*" >&2
}

note() {
	printf '%s: %s\n' "$OOMGUARD_LOG_PREFIX" "$*" >&2
}

need_root() {
	[[ $(id -u) == 0 ]] || die "must run as root (uid 0)"
}

# run_logged LOG CMD...: run CMD with its output appended to LOG; on failure
# print the tail of CMD's output to stderr and return CMD's status.
run_logged() {
	local log=$1 rc=0 out
	shift
	mkdir -p "$(dirname "$log")"
	out=$(mktemp)
	"$@" >"$out" 2>&1 || rc=$?
	{
		printf '+ %s\n' "$*"
		cat "$out"
	} >>"$log"
	if ((rc != 0)); then
		printf '%s: command failed (exit %d): %s\n' "$OOMGUARD_LOG_PREFIX" "$rc" "$*" >&2
		tail -n 20 "$out" | sed 's/^/    /' >&2
		printf '%s: (full output in %s)\n' "$OOMGUARD_LOG_PREFIX" "$log" >&2
	fi
	rm -f "$out"
	return "$rc"
}

# Directory of a containerd version's binaries (VER: 1.6, 1.7 or 2).
containerd_bin_dir() {
	case $1 in
	1.6 | 1.7 | 2) printf '%s\n' "$CACHE/containerd/$1/bin" ;;
	*) die "unknown containerd version '$1' (expected 1.6, 1.7 or 2)" ;;
	esac
}
