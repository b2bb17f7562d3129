#!/usr/bin/env bash
# What a critest run needs besides hack/cri/setup.sh: the critest binary, a
# registry holding every image the suite pulls, and a dynamic busybox for them.
#
# usage: hack/critest/setup.sh [--where]
#
#   (no argument)  Prints the path of critest and prepares:
#                  apt (bookworm)  docker-registry, iptables (CNI portmap), only when missing
#                  .cache/critest/registry/   registry storage filled by cri-tools'
#                                             images/mkimages.py (beside critest) from the
#                                             dynamic busybox (.cache/busybox-dyn); rebuilt
#                                             when mkimages.py or the busybox changes
#   --where        Only prints the path of critest (exit 3 if there is none).
#
# critest is looked for at $CRITEST, else in ../shared/critest/ beside the
# repository (or beside one of its parents). It is used from there, never copied
# into the repository. Exit status 3 means "no critest on this machine": the
# caller says so and skips. Idempotent; prints only the path when it succeeds.
set -euo pipefail
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

find_critest() {
	if [[ -n ${CRITEST:-} ]]; then
		[[ -x $CRITEST ]] || die "CRITEST=$CRITEST is not an executable file"
		printf '%s\n' "$CRITEST"
		return 0
	fi
	local d=$REPO
	while [[ $d != / ]]; do
		d=$(dirname "$d")
		if [[ -x $d/shared/critest/critest ]]; then
			printf '%s\n' "$d/shared/critest/critest"
			return 0
		fi
	done
	return 3
}

where_only=0
case ${1:-} in
-h | --help) usage 0 ;;
--where) where_only=1 ;;
"") ;;
*) die "unknown argument '$1' (see --help)" ;;
esac

critest=$(find_critest) || {
	note "no critest: set CRITEST, or put cri-tools' critest in ../shared/critest/ beside the repository"
	exit 3
}
if ((where_only)); then
	printf '%s\n' "$critest"
	exit 0
fi
need_root
images=$(dirname "$critest")/images
[[ -f $images/mkimages.py ]] || die "$images/mkimages.py is missing (it builds the images critest pulls)"

OUT="$CACHE/critest"
LOG="$CACHE/logs/critest-setup.log"
mkdir -p "$OUT" "$CACHE/logs"
exec 8>"$OUT/.setup.lock"
flock -w 600 8 || die "timed out waiting for the lock $OUT/.setup.lock"

apt_install docker-registry iptables

busybox=$CACHE/busybox-dyn/bin/busybox
[[ -x $busybox ]] || die "$busybox is missing: run hack/deps.sh"

# The registry content depends on mkimages.py, its helpers and the busybox.
stamp=$(cat "$images/mkimages.py" "$images"/bin-* "$(readlink -f "$busybox")" | sha256sum | cut -c1-16)
if [[ $(cat "$OUT/registry.stamp" 2>/dev/null) != "$stamp" ]]; then
	rm -rf "$OUT/registry" "$OUT/registry.new"
	mkdir -p "$OUT/registry.new"
	port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
	"$REPO/hack/critest/registry.sh" config "$OUT/registry.new" "127.0.0.1:$port" >"$OUT/registry-fill.yml"
	docker-registry serve "$OUT/registry-fill.yml" >>"$LOG" 2>&1 &
	reg=$!
	trap 'kill $reg 2>/dev/null || true' EXIT
	for ((i = 0; i < 100; i++)); do
		python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/v2/')" 2>/dev/null && break
		sleep 0.1
	done
	run_logged "$LOG" python3 "$images/mkimages.py" --registry "127.0.0.1:$port" --busybox "$busybox" ||
		die "mkimages.py could not fill the registry"
	kill "$reg"
	wait "$reg" 2>/dev/null || true
	trap - EXIT
	rm -f "$OUT/registry-fill.yml"
	mv "$OUT/registry.new" "$OUT/registry"
	printf '%s\n' "$stamp" >"$OUT/registry.stamp"
fi
printf '%s\n' "$critest"
