#!/usr/bin/env bash
# Check the set-up end to end with the stock runc shim: for each containerd
# version, start a private containerd, run a container, run one that is
# OOM-killed (exit 137, /tasks/oom seen by "ctr events"), stop, and check that
# no process, mount, cgroup or directory is left behind.
#
# usage: hack/selftest.sh [VER...]      (default: 1.6 1.7 2; run hack/deps.sh first)
set -euo pipefail
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root

vers=("$@")
((${#vers[@]})) || vers=(1.6 1.7 2)
rootfs=$("$REPO/hack/rootfs.sh")
failed=0

fail() {
	warn "containerd $ver: $*"
	failed=$((failed + 1))
}

for ver in "${vers[@]}"; do
	failed_before=$failed
	dir="/tmp/oomguard-selftest-$ver"
	"$REPO/hack/containerd.sh" stop "$dir"
	sock=$("$REPO/hack/containerd.sh" start "$ver" "$dir" 2>/dev/null)
	ctr=("$(containerd_bin_dir "$ver")/ctr" --address "$sock")
	# Named after DIR, so that stop removes its empty cgroup parents.
	ns="oomguard-selftest-$ver"
	events="$dir/events.txt"
	"${ctr[@]}" -n "$ns" events >"$events" 2>&1 &
	events_pid=$!
	sleep 0.3

	# ctr run: --rootfs is a flag without value, the directory takes the
	# place of the image; it must be the last flag. No PATH is set.
	out=$("${ctr[@]}" -n "$ns" run --rm --runtime io.containerd.runc.v2 --rootfs "$rootfs" t1 /bin/echo hello 2>&1) || true
	[[ $out == hello ]] || fail "echo: got '$out'"

	rc=0
	"${ctr[@]}" -n "$ns" run --rm --memory-limit 33554432 --rootfs "$rootfs" t2 \
		/bin/sh -c 'dd if=/dev/zero of=/dev/null bs=100M count=1' >/dev/null 2>&1 || rc=$?
	((rc == 137)) || fail "OOM container exited $rc, not 137"

	sleep 0.3
	kill "$events_pid" 2>/dev/null || true
	wait "$events_pid" 2>/dev/null || true
	grep -q "/tasks/oom {\"container_id\":\"t2\"" "$events" || fail "no /tasks/oom event for t2"

	# Leave a running container behind for stop to clean up.
	"${ctr[@]}" -n "$ns" run -d --rootfs "$rootfs" t3 /bin/sleep 600 >/dev/null 2>&1 || fail "ctr run -d failed"

	"$REPO/hack/containerd.sh" stop "$dir"
	[[ ! -e $dir ]] || fail "$dir left behind"
	grep -qF " $dir" /proc/self/mountinfo && fail "mounts left under $dir"
	for cg in /sys/fs/cgroup/*/"$ns"; do
		[[ -e $cg ]] && fail "cgroup $cg left behind"
	done
	for p in /proc/[0-9]*/cmdline; do
		{ tr '\0' ' ' <"$p"; } 2>/dev/null | grep -qF -- "$dir/" && fail "process ${p//[^0-9]/} left behind"
	done
	if ((failed == failed_before)); then
		note "containerd $ver ok"
	fi
done

((failed == 0)) || die "$failed check(s) failed"
