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

# runsc 20240729 (trixie's, hack/deps.sh runsc): the test lanes' gVisor.
RUNSC_LANE="$CACHE/runsc/20240729/bin/runsc"

# lane_oomguard_configs SHIM DIR [ROOT]: the oomguard TOML files a test
# lane's handlers point at, as `SHIM install --config-dir DIR` writes them on
# this machine (it checks the runsc it finds; runsc 20240729 is first on its
# PATH), with runsc.toml's binary_name naming that runsc, and ROOT as its
# state root when given. Prints nothing; dies naming the failure.
lane_oomguard_configs() {
	local shim=$1 dir=$2 root=${3:-} out
	[[ -x $shim ]] || die "no shim at $shim: build it first (cargo build)"
	rm -f "$dir/runc.toml" "$dir/runsc.toml"
	out=$(PATH="$(dirname "$RUNSC_LANE"):$PATH" "$shim" install --config-dir "$dir" 2>&1) ||
		die "$shim install --config-dir $dir failed: $out"
	[[ -x $RUNSC_LANE ]] || return 0
	local -a edit=(-e "s#^binary_name = \"runsc\"#binary_name = \"$RUNSC_LANE\"#")
	[[ -z $root ]] || edit+=(-e "/^binary_name = /a root = \"$root\"")
	sed -i "${edit[@]}" "$dir/runsc.toml"
}

# bin_and_out_dir NAME ARGS...: the "[--bin BINARY] [OUT_DIR]" arguments of
# the packaging scripts (NAME in messages), into $bin (a real path, or
# empty) and $out (or empty); -h prints the script's help.
bin_and_out_dir() {
	local name=$1
	shift
	bin=""
	out=""
	while (($#)); do
		case $1 in
		--bin)
			(($# >= 2)) || usage 2 >&2
			bin=$(realpath -e -- "$2") || die "no binary $2"
			shift 2
			;;
		-h | --help) usage 0 ;;
		-*)
			echo "$name: unknown option '$1'" >&2
			usage 2 >&2
			;;
		*)
			[[ -z $out ]] || usage 2 >&2
			out=$1
			shift
			;;
		esac
	done
}

# usage [STATUS]: print the script's header comment (its help) and exit.
usage() {
	sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
	exit "${1:-0}"
}

abs_dir() { # DIR (need not exist) -> absolute path, without trailing slash
	local d=$1
	[[ -n $d ]] || die "empty DIR"
	[[ $d == /* ]] || d="$PWD/$d"
	d=$(realpath -m -- "$d")
	[[ $d != / ]] || die "refusing to use / as DIR"
	printf '%s\n' "$d"
}

# A process exists and is not a zombie (PID 1 here reaps orphans late, and
# kill -0 succeeds on zombies).
alive() {
	local st
	st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	st=${st##*) }
	[[ ${st:0:1} != Z ]]
}

# daemon_pid PIDFILE ARG: the pid in PIDFILE if that process is still the
# daemon started with ARG (its config file) on its command line, else nothing.
daemon_pid() {
	local pidfile=$1 arg=$2 pid
	[[ -f $pidfile ]] || return 0
	pid=$(<"$pidfile")
	[[ $pid =~ ^[0-9]+$ ]] || return 0
	if [[ -r /proc/$pid/cmdline ]] && tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "$arg"; then
		printf '%s\n' "$pid"
	fi
}

# stop_pid NAME PID SECONDS: SIGTERM, wait up to SECONDS, then SIGKILL.
stop_pid() {
	local name=$1 pid=$2 i
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < $3 * 10; i++)); do
		alive "$pid" || return 0
		sleep 0.1
	done
	warn "$name (pid $pid) ignored SIGTERM for $3 s: SIGKILL"
	kill -KILL "$pid" 2>/dev/null || true
	for ((i = 0; i < 50; i++)); do
		alive "$pid" || return 0
		sleep 0.1
	done
}

# Mount points of cgroup hierarchies (v1 controllers and v2).
cgroup_mounts() {
	awk '{ for (i = 7; i <= NF; i++) if ($i == "-") break; if ($(i + 1) == "cgroup" || $(i + 1) == "cgroup2") print $5 }' /proc/self/mountinfo
}

unescape_mount() { # mountinfo escapes space, tab, newline, backslash as \ooo
	printf '%b' "${1//\\/\\0}"
}

mounts_under() { # DIR -> mount points at or under DIR, deepest/latest first
	local dir=$1 mp
	awk '{ print $5 }' /proc/self/mountinfo | tac | while IFS= read -r mp; do
		mp=$(unescape_mount "$mp")
		[[ $mp == "$dir" || $mp == "$dir"/* ]] && printf '%s\n' "$mp"
	done
	return 0
}

pkg_installed() { # PKG: the Debian package is installed
	[[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) == installed ]]
}

# apt_install PKG...: install the Debian packages that are missing (output to
# $LOG; apt-get update and one retry when the install fails).
apt_install() {
	local -a missing=()
	local p
	for p in "$@"; do pkg_installed "$p" || missing+=("$p"); done
	((${#missing[@]})) || return 0
	note "apt-get install ${missing[*]}"
	local -a cmd=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}")
	if ! "${cmd[@]}" >>"${LOG:?}" 2>&1; then
		note "install failed; running apt-get update and retrying"
		run_logged "$LOG" apt-get update -q --error-on=any || die "apt-get update failed"
		run_logged "$LOG" "${cmd[@]}" || die "could not install ${missing[*]}"
	fi
}
