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
NS=demo
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
cat <<'TXT'

Under the stock shim a container whose child was OOM-killed exits 0 ("Completed").
oomguard reports every OOM kill (TaskOOM before TaskExit) and never 0 for a task
that memory killed (oom_group, on by default).
TXT
