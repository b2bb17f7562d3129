#!/usr/bin/env bash
# A private containerd for CRI (Kubernetes) tests, in a network namespace of
# its own.
#
# usage: hack/cri/containerd.sh start VER DIR [SHIM_DIR]
#        hack/cri/containerd.sh stop DIR
#        hack/cri/containerd.sh netns DIR
#        hack/cri/containerd.sh config VER DIR
#
#   start  Runs hack/cri/setup.sh, creates the network namespace
#          oomguard-<hash of DIR> (ip netns add; lo up), and in it starts
#          hack/containerd.sh start VER DIR SHIM_DIR with
#            - the documented CRI runtime handlers (docs/configuration.md):
#              hack/cri/containerd-1.x.toml (VER 1.6, 1.7) or
#              hack/cri/containerd-2.x.toml (VER 2), as they
#              are except that their "version = N" line is dropped (the
#              generated config has it) and "/etc/oomguard/" becomes
#              DIR/oomguard/, where SHIM_DIR's shim has written runc.toml and
#              runsc.toml as `install --config-dir` does on this machine
#              (runsc.toml naming runsc 20240729: gVisor's default platform,
#              systrap, and network = "host" where this kernel needs it), and
#              the runtime_path /usr/bin/containerd-shim-oomguard-v2 becomes
#              SHIM_DIR's. Handlers:
#              "runc" (stock, default), "oomguard", "oomguard-runsc";
#            - the sandbox image localhost/oomguard/pause:1.
#          Then writes the CNI network DIR/cni/net.d/10-oomguard.conflist
#          (bridge "oomguard0" + host-local addresses in 10.88.0.0/16, state in
#          DIR/cni/ipam; the bridge lives in the private namespace, not on the
#          host) and imports localhost/oomguard/pause:1 and
#          localhost/oomguard/busybox:1 into the namespace k8s.io. Prints the
#          socket path. OOMGUARD_CONTAINERD_EXTRA is appended after the
#          handlers. OOMGUARD_CNI_PORTMAP=1 adds CNI's portmap plugin (host
#          ports, with iptables rules inside the private namespace only).
#          OOMGUARD_CRI_MOUNTNS=1 starts containerd in a mount namespace of
#          its own, with shared propagation (mounts of containerd, the shims
#          and containers are then seen in /proc/CONTAINERD_PID/mountinfo,
#          not the host's).
#   stop   hack/containerd.sh stop DIR, then removes the network namespace.
#   netns  Prints the network namespace's name.
#   config Writes DIR/config.toml for a later start (CRI, the pause image, no
#          oomguard handler: an operator's file before "containerd-shim-oomguard-v2
#          install") and prints its path; start then runs containerd on that
#          file as it is (hack/containerd.sh config), without adding the
#          documented handlers or writing DIR/oomguard/ (install's, then).
set -euo pipefail
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

netns_name() {
	printf 'oomguard-%s\n' "$(printf '%s' "$1" | sha256sum | cut -c1-12)"
}

# The documented CRI snippet for VER, made usable as OOMGUARD_CONTAINERD_EXTRA,
# its TOML files in CONFIG_DIR (as install writes them, lane_oomguard_configs).
handlers() {
	local ver=$1 shim_dir=$2 config_dir=$3 file
	case $ver in
	1.6 | 1.7) file="$REPO/hack/cri/containerd-1.x.toml" ;;
	2) file="$REPO/hack/cri/containerd-2.x.toml" ;;
	*) die "unknown containerd version '$ver' (expected 1.6, 1.7 or 2)" ;;
	esac
	sed -e '/^version = [0-9]*$/d' -e "s#/etc/oomguard/#$config_dir/#g" \
		-e "s#/usr/bin/containerd-shim-oomguard-v2#$shim_dir/containerd-shim-oomguard-v2#g" "$file"
}

cmd_start() {
	(($# >= 2 && $# <= 3)) || usage 2 >&2
	local ver=$1 dir shim_dir
	dir=$(abs_dir "$2")
	shim_dir=${3:-$REPO/target/debug}
	need_root
	"$REPO/hack/cri/setup.sh"

	local ns
	ns=$(netns_name "$dir")
	if [[ ! -e /run/netns/$ns ]]; then
		ip netns add "$ns" || die "ip netns add $ns failed"
	fi
	ip -n "$ns" link set lo up || die "could not bring lo up in $ns"

	local extra sock
	shim_dir=$(abs_dir "$shim_dir")
	extra=$(handlers "$ver" "$shim_dir" "$dir/oomguard")
	if [[ -n ${OOMGUARD_CONTAINERD_EXTRA:-} ]]; then
		extra+=$'\n'"$OOMGUARD_CONTAINERD_EXTRA"
	fi
	# Only the network namespace changes: containerd (and the shims, CNI
	# plugins and containers it starts) see the host's mounts and cgroups.
	local -a mountns=()
	if [[ ${OOMGUARD_CRI_MOUNTNS:-0} == 1 ]]; then
		# A mount namespace of its own whose mounts are shared (this host's
		# "/" is private): mount propagation into and out of containers
		# works there without changing the host's mounts.
		mountns=(unshare --mount --propagation shared)
	fi
	sock=$(OOMGUARD_CONTAINERD_EXTRA=$extra OOMGUARD_SANDBOX_IMAGE=localhost/oomguard/pause:1 \
		"${mountns[@]}" nsenter --net="/run/netns/$ns" "$REPO/hack/containerd.sh" start "$ver" "$dir" "$shim_dir")
	# The shim reads them when a pod is made, not containerd at its start
	# (which wants DIR to itself before it). A config made by 'config' is the
	# operator's, and so are the files its handlers name.
	[[ -e $dir/config.kept ]] ||
		lane_oomguard_configs "$shim_dir/containerd-shim-oomguard-v2" "$dir/oomguard"

	local conf="$dir/cni/net.d/10-oomguard.conflist"
	if [[ ! -e $conf ]]; then
		mkdir -p "$dir/cni/ipam"
		jq -n --arg data "$dir/cni/ipam" --argjson portmap "${OOMGUARD_CNI_PORTMAP:-0}" '{
			cniVersion: "1.0.0",
			name: "oomguard",
			plugins: ([{
				type: "bridge", bridge: "oomguard0", isGateway: true, ipMasq: false,
				hairpinMode: true,
				ipam: {type: "host-local", dataDir: $data,
					ranges: [[{subnet: "10.88.0.0/16"}]], routes: [{dst: "0.0.0.0/0"}]}
			}] + (if $portmap == 1 then [{type: "portmap", capabilities: {portMappings: true}}] else [] end))
		}' >"$conf.tmp"
		mv "$conf.tmp" "$conf"
	fi

	local ctr
	ctr=("$(containerd_bin_dir "$ver")/ctr" --address "$sock" -n k8s.io)
	local img
	for img in pause busybox; do
		if ! "${ctr[@]}" images ls -q | grep -qxF "localhost/oomguard/$img:1"; then
			run_logged "$dir/cri-setup.log" "${ctr[@]}" images import "$CACHE/cri/$img.oci.tar" ||
				die "ctr images import $img.oci.tar failed"
		fi
	done
	printf '%s\n' "$sock"
}

cmd_stop() {
	(($# == 1)) || usage 2 >&2
	local dir ns
	dir=$(abs_dir "$1")
	need_root
	ns=$(netns_name "$dir")
	"$REPO/hack/containerd.sh" stop "$dir"
	if [[ -e /run/netns/$ns ]]; then
		ip netns del "$ns" || die "ip netns del $ns failed"
	fi
}

(($#)) || usage 2 >&2
sub=$1
shift
case $sub in
start) cmd_start "$@" ;;
stop) cmd_stop "$@" ;;
config)
	(($# == 2)) || usage 2 >&2
	OOMGUARD_SANDBOX_IMAGE=localhost/oomguard/pause:1 "$REPO/hack/containerd.sh" config "$@"
	;;
netns)
	(($# == 1)) || usage 2 >&2
	netns_name "$(abs_dir "$1")"
	;;
-h | --help | help) usage 0 ;;
*)
	echo "cri/containerd.sh: unknown command '$sub'" >&2
	usage 2 >&2
	;;
esac
