#!/usr/bin/env bash
# The demo: a private containerd with oomguard registered; containers that run
# out of memory, each under the stock shim and under oomguard; the events
# containerd received and the exit codes it reported, side by side.
#
# usage: hack/demo.sh [VER]     (VER: containerd 1.6, 1.7 or 2; default 1.7)
set -euo pipefail
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VER=${1:-1.7}
DIR=$(mktemp -d /tmp/oomguard-demo.XXXXXX)
SHIM_DIR=${OOMGUARD_SHIM_DIR:-$REPO/target/debug}
ROOTFS=$("$REPO/hack/rootfs.sh")
NS=$(basename "$DIR") # named after DIR: containerd.sh stop removes its cgroup parents
EVENTS_PID=""

cleanup() {
	[[ -z $EVENTS_PID ]] || kill "$EVENTS_PID" 2>/dev/null || true
	"$REPO/hack/containerd.sh" stop "$DIR" || true
}
trap cleanup EXIT

SOCK=$("$REPO/hack/containerd.sh" start "$VER" "$DIR" "$SHIM_DIR")
CTR=("$CACHE/containerd/$VER/bin/ctr" --address "$SOCK" --namespace "$NS")
"${CTR[@]}" events >"$DIR/events.txt" 2>/dev/null &
EVENTS_PID=$!
sleep 0.3

LIMIT=33554432 # 32 MiB
DD='dd if=/dev/zero of=/dev/null bs=100M count=1 2>/dev/null'
declare -A SCENARIO=(
	[init-oom]="$DD"
	[child-oom-exit-0]="$DD; exit 0"
	[clean-exit]="true"
)
ORDER=(init-oom child-oom-exit-0 clean-exit)

# events ID: the task events of ID, one word each (exit with its status).
events() {
	grep " $NS /tasks/" "$DIR/events.txt" |
		while read -r _ _ _ _ _ topic body; do
			[[ $(jq -r '.container_id // empty' <<<"$body") == "$1" ]] || continue
			case $topic in
			/tasks/exit) printf '%s(%s) ' "${topic#/tasks/}" "$(jq -r '.exit_status // 0' <<<"$body")" ;;
			*) printf '%s ' "${topic#/tasks/}" ;;
			esac
		done
}

printf '\ncontainerd %s, memory limit %d MiB, busybox dd of 100 MiB\n\n' "$VER" $((LIMIT >> 20))
printf '%-18s %-26s %-5s %s\n' SCENARIO RUNTIME EXIT "EVENTS (as containerd received them)"
for name in "${ORDER[@]}"; do
	for runtime in io.containerd.runc.v2 io.containerd.oomguard.v2; do
		id="$name-${runtime//[.]/-}"
		code=0
		"${CTR[@]}" run --rm --runtime "$runtime" --memory-limit "$LIMIT" --rootfs "$ROOTFS" \
			"$id" /bin/sh -c "${SCENARIO[$name]}" </dev/null >/dev/null 2>&1 || code=$?
		sleep 0.3
		printf '%-18s %-26s %-5s %s\n' "$name" "$runtime" "$code" "$(events "$id")"
	done
done
# gVisor: the same story with runsc as the OCI runtime. The stock shim runs
# it as a runc-compatible binary (through a wrapper adding runsc's flags).
RUNSC=$RUNSC_LANE
if [[ -x $RUNSC ]]; then
	# oomguard's runsc.toml as `install` writes it on this machine (gVisor's
	# default platform, systrap; network "host" where this kernel needs it);
	# the stock shim gets the same flags through a wrapper.
	lane_oomguard_configs "$SHIM_DIR/containerd-shim-oomguard-v2" "$DIR/oomguard"
	flags=$(sed -n 's/^ *\([a-z_-]*\) = "\(.*\)"$/--\1=\2/p' "$DIR/oomguard/runsc.toml" |
		grep -v -e '^--binary_name=' -e '^--root=' | tr '\n' ' ')
	cat >"$DIR/runsc-lane" <<SH
#!/bin/sh
exec $RUNSC $flags"\$@"
SH
	chmod +x "$DIR/runsc-lane"
	GLIMIT=67108864 # 64 MiB: the host kills the sandbox (gVisor has no OOM killer inside)
	GDD='dd if=/dev/zero of=/dev/null bs=200M count=1 2>/dev/null; exit 0'
	printf '\ngVisor (runsc 20240729, systrap, runsc flags: %s), memory limit %d MiB, sh -c "dd of 200 MiB; exit 0"\n\n' \
		"${flags:-none}" $((GLIMIT >> 20))
	printf '%-18s %-26s %-5s %s\n' SCENARIO RUNTIME EXIT "EVENTS (as containerd received them)"
	for runtime in io.containerd.runc.v2 io.containerd.oomguard.v2; do
		if [[ $runtime == io.containerd.runc.v2 ]]; then
			opts=(--runc-binary "$DIR/runsc-lane")
		else
			opts=(--runtime-config-path "$DIR/oomguard/runsc.toml")
		fi
		tag=${runtime//[.]/-}
		# One container in its own sandbox.
		id="gvisor-oom-$tag"
		cp -a "$ROOTFS" "$DIR/rootfs-$id"
		code=0
		timeout 120 "${CTR[@]}" run --rm --runtime "$runtime" "${opts[@]}" --memory-limit "$GLIMIT" --rootfs "$DIR/rootfs-$id" \
			"$id" /bin/sh -c "$GDD" </dev/null >/dev/null 2>&1 || code=$?
		sleep 0.3
		printf '%-18s %-26s %-5s %s\n' gvisor-oom "$runtime" "$code" "$(events "$id")"
		# A pod: a sandbox (pause) container and an app container joining it;
		# the app's exec fills the pod's memory.
		pod="gpod-$tag" app="gapp-$tag"
		cp -a "$ROOTFS" "$DIR/rootfs-$pod"
		cp -a "$ROOTFS" "$DIR/rootfs-$app"
		"${CTR[@]}" run -d --runtime "$runtime" "${opts[@]}" --memory-limit "$GLIMIT" \
			--annotation io.kubernetes.cri.container-type=sandbox --annotation "io.kubernetes.cri.sandbox-id=$pod" \
			--rootfs "$DIR/rootfs-$pod" "$pod" /bin/sleep 1000 >/dev/null 2>"$DIR/$pod.err" ||
			printf '%-18s %-26s %-5s %s\n' "pod: sandbox" "$runtime" "fail" "$(tail -c 200 "$DIR/$pod.err")"
		code=0
		timeout 20 "${CTR[@]}" run -d --runtime "$runtime" "${opts[@]}" \
			--annotation io.kubernetes.cri.container-type=container --annotation "io.kubernetes.cri.sandbox-id=$pod" \
			--rootfs "$DIR/rootfs-$app" "$app" /bin/sleep 1000 >/dev/null 2>&1 || code=$?
		if ((code == 124)); then
			printf '%-18s %-26s %-5s %s\n' "pod: start app" "$runtime" "hung" "(runsc start of a joining container: its stdio was captured; gave up after 20 s)"
		fi
		code=0
		timeout 60 "${CTR[@]}" task exec --exec-id hog "$app" /bin/sh -c "$GDD" </dev/null >/dev/null 2>&1 || code=$?
		sleep 2
		printf '%-18s %-26s %-5s %s\n' "pod: exec in app" "$runtime" "$code" "(the exec's own status)"
		for c in "$pod" "$app"; do
			st=$("${CTR[@]}" task ls 2>/dev/null | awk -v id="$c" '$1 == id {print $3}')
			printf '%-18s %-26s %-5s %s\n' "pod: ${c%%-*}" "$runtime" "${st:-?}" "$(events "$c")"
		done
		for c in "$app" "$pod"; do
			timeout 20 "${CTR[@]}" task kill -s SIGKILL "$c" >/dev/null 2>&1 || true
			sleep 0.5
			timeout 20 "${CTR[@]}" task delete -f "$c" >/dev/null 2>&1 || true
			timeout 20 "${CTR[@]}" container rm "$c" >/dev/null 2>&1 || true
		done
	done
fi

cat <<'TXT'

Under the stock shim a container whose child was OOM-killed exits 0 ("Completed"),
and under gVisor a pod's app container hangs at start (the shim captures the
stdio runsc start hands to the app), so a pod OOM is blamed on nobody.
oomguard reports every OOM kill (TaskOOM before TaskExit) and never 0 (nor gVisor's
synthetic 128) for a task that memory killed (oom_group, on by default).
TXT
