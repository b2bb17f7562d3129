#!/usr/bin/env bash
# Kubernetes' CRI conformance suite (cri-tools' critest) against a private
# containerd, handler by handler.
#
# usage: hack/critest/run.sh start VER DIR [SHIM_DIR]
#        hack/critest/run.sh run DIR HANDLER REPORT [CRITEST_ARGS...]
#        hack/critest/run.sh stop DIR
#        hack/critest/run.sh all VER DIR HANDLER...
#
#   start  hack/critest/setup.sh, then a private CRI containerd VER in its own
#          network namespace (hack/cri/containerd.sh start VER DIR SHIM_DIR) with
#            - pulls of registry.k8s.io and gcr.io redirected (hosts.toml in
#              DIR/certs.d) to a registry on 127.0.0.1:5000 inside that
#              namespace, serving .cache/critest/registry;
#            - runsc 20240729 (.cache/runsc/20240729) first on containerd's PATH,
#              so the handler "oomguard-runsc" runs it;
#            - the stock gVisor handler "runsc": containerd-shim-runc-v2 with
#              BinaryName = DIR/runsc-lane (runsc 20240729 with the flags
#              oomguard-runsc's runsc.toml gives on this machine: gVisor's
#              default platform, systrap, and --network=host where this
#              kernel needs it);
#            - a CNI bridge with portmap (port mapping specs);
#            - a mount namespace of its own with shared propagation (mount
#              propagation specs; this host's "/" is private).
#          Prints the socket path.
#   run    critest with --runtime-handler=HANDLER in containerd's network and
#          mount namespaces;
#          the ginkgo JSON report goes to REPORT, the output to REPORT.log.
#          Exit status: critest's.
#   stop   Stops the registry and containerd (hack/cri/containerd.sh stop DIR).
#   all    start, run for each HANDLER (REPORT DIR/../critest-VER-HANDLER.json),
#          stop; prints one "HANDLER passed=N failed=N skipped=N" line each.
#
# Exit status 3: no critest on this machine (see hack/critest/setup.sh).
# Skipped always: the one spec that needs the internet (it pins an upstream
# manifest digest): "public image with digest should be pulled and removed".
set -euo pipefail
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

OFFLINE_SKIP='public image with digest should be pulled and removed'
RUNSC_DIR=$CACHE/runsc/20240729/bin

netns_of() { "$REPO/hack/cri/containerd.sh" netns "$1"; }

# The extra containerd configuration: registry mirrors and stock gVisor.
extra_config() {
	local ver=$1 dir=$2 images runtime
	if [[ $ver == 2 ]]; then
		images='plugins."io.containerd.cri.v1.images"'
		runtime='plugins."io.containerd.cri.v1.runtime"'
	else
		images='plugins."io.containerd.grpc.v1.cri"'
		runtime='plugins."io.containerd.grpc.v1.cri"'
	fi
	cat <<EOF
[$images.registry]
  config_path = "$dir/certs.d"

# Stock gVisor: the runc shim running runsc as a runc-compatible binary.
[$runtime.containerd.runtimes.runsc]
  runtime_type = "io.containerd.runc.v2"
  [$runtime.containerd.runtimes.runsc.options]
    BinaryName = "$dir/runsc-lane"
EOF
}

cmd_start() {
	(($# >= 2 && $# <= 3)) || usage 2 >&2
	local ver=$1 dir shim_dir
	dir=$(abs_dir "$2")
	shim_dir=${3:-$REPO/target/debug}
	need_root
	"$REPO/hack/critest/setup.sh" >/dev/null
	"$REPO/hack/deps.sh" runsc
	[[ -x $RUNSC_DIR/runsc ]] || die "$RUNSC_DIR/runsc is missing: run hack/deps.sh runsc"

	local sock
	sock=$(PATH="$RUNSC_DIR:$PATH" OOMGUARD_CONTAINERD_EXTRA=$(extra_config "$ver" "$dir") \
		OOMGUARD_CNI_PORTMAP=1 OOMGUARD_CRI_MOUNTNS=1 \
		"$REPO/hack/cri/containerd.sh" start "$ver" "$dir" "$shim_dir")
	# Read at pull and create time, so they may come after the start.
	local host
	for host in registry.k8s.io gcr.io; do
		mkdir -p "$dir/certs.d/$host"
		cat >"$dir/certs.d/$host/hosts.toml" <<EOF
server = "http://127.0.0.1:5000"

[host."http://127.0.0.1:5000"]
  capabilities = ["pull", "resolve"]
EOF
	done
	# The stock handler gets the flags oomguard-runsc's runsc.toml has.
	local flags
	flags=$(sed -n 's/^ *\([a-z_-]*\) = "\(.*\)"$/--\1=\2/p' "$dir/oomguard/runsc.toml" |
		grep -v -e '^--binary_name=' -e '^--root=' | tr '\n' ' ')
	cat >"$dir/runsc-lane" <<EOF
#!/bin/sh
exec "$RUNSC_DIR/runsc" $flags"\$@"
EOF
	chmod 0755 "$dir/runsc-lane"

	"$REPO/hack/critest/registry.sh" start "$dir/registry" "$CACHE/critest/registry" "$(netns_of "$dir")"
	printf '%s\n' "$sock"
}

cmd_run() {
	(($# >= 3)) || usage 2 >&2
	local dir handler=$2 report=$3 critest
	dir=$(abs_dir "$1")
	shift 3
	need_root
	critest=$("$REPO/hack/critest/setup.sh" --where)
	local sock="$dir/containerd.sock"
	[[ -S $sock ]] || die "no containerd socket at $sock: run '$0 start VER $dir' first"
	mkdir -p "$(dirname "$report")"
	rm -f "$report"
	local rc=0
	local pid
	pid=$(daemon_pid "$dir/containerd.pid" "$dir/config.toml")
	[[ -n $pid ]] || die "containerd for $dir is not running"
	# The suite checks port mappings from where it runs (DIR's network
	# namespace) and mount propagation between host paths and containers
	# (containerd's mount namespace).
	nsenter --target "$pid" --net --mount "$critest" \
		--runtime-endpoint "unix://$sock" --image-endpoint "unix://$sock" \
		--runtime-handler="$handler" \
		--ginkgo.skip="$OFFLINE_SKIP" \
		--ginkgo.no-color \
		--ginkgo.json-report="$report" \
		"$@" >"$report.log" 2>&1 || rc=$?
	return "$rc"
}

cmd_stop() {
	(($# == 1)) || usage 2 >&2
	local dir
	dir=$(abs_dir "$1")
	need_root
	"$REPO/hack/critest/registry.sh" stop "$dir/registry"
	"$REPO/hack/cri/containerd.sh" stop "$dir"
}

# passed/failed/skipped counts of a ginkgo JSON report.
summary() {
	jq -r '[.[].SpecReports[]? | select(.LeafNodeType == "It")] |
		"passed=\([.[] | select(.State == "passed")] | length) failed=\([.[] | select(.State == "failed" or .State == "panicked" or .State == "timedout" or .State == "interrupted" or .State == "aborted")] | length) skipped=\([.[] | select(.State == "skipped" or .State == "pending")] | length)"' "$1"
}

cmd_all() {
	(($# >= 3)) || usage 2 >&2
	local ver=$1 h report
	ALL_DIR=$(abs_dir "$2")
	local dir=$ALL_DIR
	shift 2
	trap 'cmd_stop "$ALL_DIR" || true' EXIT
	cmd_start "$ver" "$dir" >/dev/null
	for h in "$@"; do
		report="$(dirname "$dir")/critest-$ver-$h.json"
		cmd_run "$dir" "$h" "$report" || true
		printf '%s %s\n' "$h" "$(summary "$report")"
	done
}

(($#)) || usage 2 >&2
sub=$1
shift
case $sub in
start) cmd_start "$@" ;;
run) cmd_run "$@" ;;
stop) cmd_stop "$@" ;;
all) cmd_all "$@" ;;
-h | --help | help) usage 0 ;;
*)
	echo "critest/run.sh: unknown command '$sub'" >&2
	usage 2 >&2
	;;
esac
