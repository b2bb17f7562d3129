#!/usr/bin/env bash
# A plain-HTTP docker-registry (Debian package docker-registry) for critest.
#
# usage: hack/critest/registry.sh config STORAGE ADDR
#        hack/critest/registry.sh start DIR STORAGE [NETNS]
#        hack/critest/registry.sh stop DIR
#
#   config  Prints a registry configuration serving STORAGE (a filesystem
#           storage directory) on ADDR (host:port).
#   start   Serves STORAGE read-mostly on 127.0.0.1:5000 inside the network
#           namespace NETNS (ip netns; default: the caller's), configuration
#           DIR/registry.yml, log DIR/registry.log, pid DIR/registry.pid.
#           Waits (10 s at most) until it answers.
#   stop    Stops the registry started for DIR (by its pid).
set -euo pipefail
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

config() {
	cat <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $1
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: $2
EOF
}

cmd_start() {
	(($# >= 2 && $# <= 3)) || usage 2 >&2
	local dir storage=$2 netns=${3:-}
	dir=$(abs_dir "$1")
	need_root
	command -v docker-registry >/dev/null || die "docker-registry is missing: run hack/critest/setup.sh"
	[[ -d $storage ]] || die "registry storage $storage does not exist"
	mkdir -p "$dir"
	config "$storage" 127.0.0.1:5000 >"$dir/registry.yml"
	local -a in_ns=()
	[[ -z $netns ]] || in_ns=(ip netns exec "$netns")
	"${in_ns[@]}" setsid docker-registry serve "$dir/registry.yml" </dev/null >>"$dir/registry.log" 2>&1 &
	printf '%s\n' "$!" >"$dir/registry.pid"
	local i
	for ((i = 0; i < 100; i++)); do
		if "${in_ns[@]}" python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/v2/', timeout=1)" 2>/dev/null; then
			return 0
		fi
		sleep 0.1
	done
	tail -n 20 "$dir/registry.log" >&2
	die "the registry did not answer on 127.0.0.1:5000 within 10 s"
}

cmd_stop() {
	(($# == 1)) || usage 2 >&2
	local dir pid
	dir=$(abs_dir "$1")
	pid=$(daemon_pid "$dir/registry.pid" "$dir/registry.yml")
	[[ -z $pid ]] || stop_pid registry "$pid" 5
	rm -f "$dir/registry.pid"
}

(($#)) || usage 2 >&2
sub=$1
shift
case $sub in
config)
	(($# == 2)) || usage 2 >&2
	config "$@"
	;;
start) cmd_start "$@" ;;
stop) cmd_stop "$@" ;;
-h | --help | help) usage 0 ;;
*)
	echo "critest/registry.sh: unknown command '$sub'" >&2
	usage 2 >&2
	;;
esac
