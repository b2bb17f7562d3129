#!/usr/bin/env bash
# Install what a fresh machine needs to build and test oomguard.
#
# usage: hack/deps.sh [runsc] [docker] [deb] [all]
#
#   (always)  apt (bookworm): runc busybox-static jq protobuf-compiler (protoc: containerd-client, for the `events` command and the tests)
#             .cache/busybox-dyn/   bookworm's dynamic busybox, unpacked (it conflicts
#                                   with busybox-static, so it is not installed)
#             .cache/containerd/1.6/  containerd 1.6 from bookworm  } dpkg -x, each with
#             .cache/containerd/1.7/  containerd 1.7 from trixie    } bin/containerd,
#             .cache/containerd/2/    containerd 2.x from sid       } bin/ctr, bin/containerd-shim-runc-v2
#             .cache/rootfs/busybox/  busybox-static root filesystem (hack/rootfs.sh)
#             .cache/rootfs/busybox-dyn/  dynamic busybox + libc (hack/rootfs.sh --dynamic)
#   runsc     apt (bookworm): runsc (20221219, system-wide)
#             .cache/runsc/20240729/  trixie's runsc, bin/runsc
#   docker    .cache/docker/26/       trixie's docker.io + docker-cli (bin/dockerd, bin/docker,
#             .cache/docker/28/       sid's docker.io + docker-cli     bin/docker-proxy, bin/docker-init)
#   deb       apt (bookworm): dpkg-dev (dpkg-shlibdeps, for hack/deb.sh)
#   all       runsc, docker and deb
#
# Idempotent: a step whose result exists is skipped, and a run with nothing to
# do prints nothing. Newer suites are reached through a private apt
# configuration under .cache/apt/SUITE/; the system's apt sources are untouched.
# Command output goes to .cache/logs/deps.log.
set -euo pipefail
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

want_runsc=0
want_docker=0
want_deb=0
for arg in "$@"; do
	case $arg in
	runsc) want_runsc=1 ;;
	docker) want_docker=1 ;;
	deb) want_deb=1 ;;
	all) want_runsc=1 want_docker=1 want_deb=1 ;;
	-h | --help) usage 0 ;;
	*)
		echo "deps.sh: unknown argument '$arg'" >&2
		usage 2 >&2
		;;
	esac
done

need_root
{ command -v dpkg && command -v apt-get; } >/dev/null || die "needs a Debian system (dpkg, apt-get)"
[[ $(dpkg --print-architecture) == amd64 ]] || die "only amd64 is supported"

LOG="$CACHE/logs/deps.log"
mkdir -p "$CACHE/logs"

# One deps.sh at a time (tests may call it concurrently).
exec 9>"$CACHE/.deps.lock"
if ! flock -n 9; then
	note "waiting for another deps.sh to finish"
	flock -w 1800 9 || die "timed out waiting for the lock $CACHE/.deps.lock"
fi

TMPD=""
cleanup() { [[ -z $TMPD ]] || rm -rf "$TMPD"; }
trap cleanup EXIT

# ---------------------------------------------------------------- apt helpers

# The machine's own Debian mirror: the first "deb" source for bookworm in the
# system's apt sources (one-line or deb822 format). Override with
# OOMGUARD_DEBIAN_MIRROR.
debian_mirror() {
	if [[ -n ${OOMGUARD_DEBIAN_MIRROR:-} ]]; then
		printf '%s\n' "$OOMGUARD_DEBIAN_MIRROR"
		return
	fi
	local uri="" f
	local -a lists=() deb822=()
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do [[ -f $f ]] && lists+=("$f"); done
	for f in /etc/apt/sources.list.d/*.sources; do [[ -f $f ]] && deb822+=("$f"); done
	if ((${#deb822[@]})); then
		uri=$(awk 'BEGIN { RS = ""; FS = "\n" }
			{
				u = ""; s = ""; t = ""; on = 1
				for (i = 1; i <= NF; i++) {
					if ($i ~ /^URIs:/)    { u = $i; sub(/^URIs:[ \t]*/, "", u) }
					if ($i ~ /^Suites:/)  { s = $i " " }
					if ($i ~ /^Types:/)   { t = $i " " }
					if ($i ~ /^Enabled:[ \t]*[Nn]o/) on = 0
				}
				if (on && t ~ /[ \t]deb[ \t]/ && s ~ /[ \t]bookworm[ \t]/) { split(u, a, /[ \t]+/); print a[1]; exit }
			}' "${deb822[@]}")
	fi
	if [[ -z $uri ]] && ((${#lists[@]})); then
		uri=$(awk '$1 == "deb" {
				i = 2
				if ($i ~ /^\[/) { while ($i !~ /\]$/ && i < NF) i++; i++ }
				if ($(i + 1) == "bookworm") { print $i; exit }
			}' "${lists[@]}")
	fi
	printf '%s\n' "${uri:-http://deb.debian.org/debian}"
}

# Private apt configuration for another suite (trixie, sid): its own sources
# file, lists, cache and (empty) dpkg status, so nothing of the system's apt
# state is read or changed.
suite_apt() {
	local suite=$1
	shift
	local d="$CACHE/apt/$suite"
	apt-get -q \
		-o Dir::Etc::sourcelist="$d/sources.list" \
		-o Dir::Etc::sourceparts=/dev/null \
		-o Dir::State::Lists="$d/lists" \
		-o Dir::State::status="$d/status" \
		-o Dir::Cache="$d/cache" \
		-o APT::Get::List-Cleanup=0 \
		-o APT::Sandbox::User=root \
		-o Acquire::Languages=none \
		-o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false \
		-o Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false \
		-o Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false \
		-o Acquire::IndexTargets::deb::DEP-11-icons-hidpi::DefaultEnabled=false \
		"$@"
}

suite_update() {
	local suite=$1 d="$CACHE/apt/$1"
	mkdir -p "$d/lists/partial" "$d/cache/archives/partial"
	printf 'deb %s %s main\n' "$(debian_mirror)" "$suite" >"$d/sources.list"
	[[ -e $d/status ]] || : >"$d/status"
	run_logged "$LOG" suite_apt "$suite" update --error-on=any ||
		die "apt-get update for $suite failed (private apt configuration in $d, mirror $(debian_mirror))"
}

# download SUITE DESTDIR PKG...: fetch .deb files into DESTDIR. SUITE "bookworm"
# means the system's own apt configuration.
download() {
	local suite=$1 dest=$2
	shift 2
	mkdir -p "$dest"
	if [[ $suite == bookworm ]]; then
		if ! (cd "$dest" && apt-get -q -o APT::Sandbox::User=root download "$@") >>"$LOG" 2>&1; then
			note "apt-get download $* failed; running apt-get update and retrying"
			run_logged "$LOG" apt-get update -q --error-on=any || die "apt-get update failed"
			(cd "$dest" && run_logged "$LOG" apt-get -q -o APT::Sandbox::User=root download "$@") ||
				die "could not download $* from bookworm"
		fi
		return
	fi
	if ! compgen -G "$CACHE/apt/$suite/lists/*_Packages*" >/dev/null; then
		suite_update "$suite"
	elif (cd "$dest" && suite_apt "$suite" download "$@") >>"$LOG" 2>&1; then
		return
	else
		# Lists may be stale (the suite moved on): refresh and retry.
		suite_update "$suite"
	fi
	(cd "$dest" && run_logged "$LOG" suite_apt "$suite" download "$@") ||
		die "could not download $* from $suite"
}

# install_tree DEST "CHECK_BIN [ARGS]" CHECK_REGEX SUITE:PKG...
# Download the packages, unpack them with dpkg -x into DEST, give DEST a bin/
# directory (symlinks to usr/bin/* and usr/sbin/*, except the names in
# $SKIP_BINS), and check that
# "bin/CHECK_BIN ARGS" (default ARGS: --version) runs and matches CHECK_REGEX. Skipped when
# DEST/bin/CHECK_BIN exists (DEST is only put in place once complete).
install_tree() {
	local dest=$1 check_re=$3
	local -a check_cmd
	read -r -a check_cmd <<<"$2"
	local check_bin=${check_cmd[0]}
	[[ ${#check_cmd[@]} -gt 1 ]] || check_cmd+=(--version)
	shift 3
	[[ -x $dest/bin/$check_bin ]] && return 0
	note "fetching ${*} -> ${dest#"$REPO"/}"
	mkdir -p "$CACHE"
	TMPD=$(mktemp -d "$CACHE/.tmp.XXXXXX")
	local spec suite
	for spec in "$@"; do
		suite=${spec%%:*}
		download "$suite" "$TMPD/debs/$suite" "${spec#*:}"
	done
	local tree="$TMPD/tree" deb f
	mkdir "$tree"
	for deb in "$TMPD"/debs/*/*.deb; do
		dpkg -x "$deb" "$tree" || die "dpkg -x $deb failed"
		printf '%s %s %s\n' "$(dpkg-deb -f "$deb" Package)" "$(dpkg-deb -f "$deb" Version)" "${deb#"$TMPD"/debs/}" >>"$tree/PACKAGES"
	done
	if [[ ! -e $tree/bin ]]; then
		mkdir "$tree/bin"
		for f in "$tree"/usr/bin/* "$tree"/usr/sbin/*; do
			[[ -e $f || -L $f ]] || continue
			[[ " ${SKIP_BINS:-} " != *" ${f##*/} "* ]] || continue
			ln -s "../${f#"$tree"/}" "$tree/bin/"
		done
	fi
	[[ -x $tree/bin/$check_bin ]] || die "$* has no $check_bin"
	local out
	out=$("$tree/bin/$check_bin" "${check_cmd[@]:1}" 2>&1) || die "${check_cmd[*]} failed (from $*): $out"
	[[ $out =~ $check_re ]] || die "$check_bin from $* is not the expected version ($check_re): $out"
	rm -rf "$dest"
	mkdir -p "$(dirname "$dest")"
	mv "$tree" "$dest"
	rm -rf "$TMPD"
	TMPD=""
}

# ---------------------------------------------------------------- the work

apt_install runc busybox-static jq protobuf-compiler

# Dynamic busybox (conflicts with busybox-static, so only unpacked): for images
# that need real exec of applets (hack/rootfs.sh --dynamic).
install_tree "$CACHE/busybox-dyn" "busybox --help" 'BusyBox v1\.' bookworm:busybox

install_tree "$CACHE/containerd/1.6" containerd '^containerd [^ ]+ v?1\.6\.' bookworm:containerd
install_tree "$CACHE/containerd/1.7" containerd '^containerd [^ ]+ v?1\.7\.' trixie:containerd
install_tree "$CACHE/containerd/2" containerd '^containerd [^ ]+ v?2\.' sid:containerd

"$REPO/hack/rootfs.sh" >/dev/null
"$REPO/hack/rootfs.sh" --dynamic >/dev/null

if ((want_runsc)); then
	apt_install runsc
	install_tree "$CACHE/runsc/20240729" runsc 'version [^ ]*20240729' trixie:runsc
fi

if ((want_docker)); then
	# docker-init is a symlink to tini-static; trixie's tini ships it (sid's
	# moved it to another package). It is a static binary, so any suite's works.
	# (trixie's dynamic tini needs glibc 2.38: not linked into bin/)
	SKIP_BINS=tini install_tree "$CACHE/docker/26" dockerd 'Docker version 26\.' trixie:docker.io trixie:docker-cli trixie:tini
	SKIP_BINS=tini install_tree "$CACHE/docker/28" dockerd 'Docker version 28\.' sid:docker.io sid:docker-cli trixie:tini
fi

if ((want_deb)); then
	apt_install dpkg-dev
fi
