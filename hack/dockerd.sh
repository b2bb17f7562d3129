#!/usr/bin/env bash
# Run a private dockerd (26 or 28) on a private containerd, for tests.
#
# usage: hack/dockerd.sh start VER DIR CONTAINERD_SOCK
#        hack/dockerd.sh stop DIR
#        hack/dockerd.sh image DIR
#        hack/dockerd.sh env VER DIR
#
#   start  VER is 26 or 28 (binaries from "hack/deps.sh docker" under
#          .cache/docker/VER). Writes DIR/daemon.json from hack/docker/daemon.json
#          (docs/configuration.md's; its "/etc/oomguard/" becomes DIR/oomguard/,
#          where the shim of OOMGUARD_SHIM_DIR (default target/debug) has written
#          the TOML files as `install --config-dir` does here) and starts
#          dockerd on CONTAINERD_SOCK with --iptables=false --bridge=none, data
#          root DIR/data, exec root DIR/exec, pid file DIR/docker.pid, socket
#          DIR/docker.sock, log DIR/dockerd.log, and the cgroup parent
#          /oomguard-docker-<hash of DIR> for its containers (written to
#          DIR/cgroup-parent). The storage driver is
#          overlay2, or vfs where overlay2 does not work. Waits (30 s at most)
#          until the socket answers and prints its path. Already running for
#          DIR: prints the socket path again.
#   stop   Removes all containers (docker rm -f), SIGTERM then (after 15 s) SIGKILL
#          to dockerd (by its pid), unmounts everything under DIR, removes its
#          cgroup parent and an empty /sys/fs/cgroup/*/docker that this instance
#          created, and removes DIR. A DIR that does not exist is not an error.
#   image  Imports hack/rootfs.sh's busybox as the image oomguard/busybox:local
#          (docker import, no registry; once per DIR) and prints its name.
#   env    Prints shell exports: DOCKER_HOST, DOCKER (the client binary), PATH.
#
# Environment for start:
#   OOMGUARD_DOCKERD_CONFIG  a daemon.json to run on, as it is, instead of the
#                            documented one (e.g. one "containerd-shim-oomguard-v2
#                            install --docker FILE" edited); its path is kept in
#                            DIR/config-file
#
# Docker puts its containers in containerd's namespace "moby". Use
# "docker run --pull never --network none" (there is no registry and no bridge).
set -euo pipefail
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MARKER=.oomguard-dockerd
IMAGE=oomguard/busybox:local

bin_dir() {
	case $1 in
	26 | 28) printf '%s\n' "$CACHE/docker/$1/bin" ;;
	*) die "unknown docker version '$1' (expected 26 or 28)" ;;
	esac
}

# The cgroup parent of DIR's containers (a name of DIR's own, so that several
# instances never share it and stop removes only its own).
cgroup_parent() {
	printf 'oomguard-docker-%s\n' "$(printf '%s' "$1" | sha256sum | cut -c1-12)"
}

# The daemon.json dockerd runs on for DIR (its command line names it).
config_file() {
	cat "$1/config-file" 2>/dev/null || printf '%s\n' "$1/daemon.json"
}

# Does overlayfs work in DIR (the data root's file system)?
overlay_works() {
	local t rc=0
	t=$(mktemp -d "$1/.overlay-probe.XXXXXX")
	mkdir "$t"/{l,u,w,m}
	mount -t overlay overlay -o "lowerdir=$t/l,upperdir=$t/u,workdir=$t/w" "$t/m" 2>/dev/null || rc=1
	((rc)) || umount "$t/m"
	rm -rf "$t"
	return "$rc"
}

cmd_start() {
	(($# == 3)) || usage 2 >&2
	local ver=$1 dir csock bin
	bin=$(bin_dir "$ver")
	dir=$(abs_dir "$2")
	csock=$3
	need_root
	[[ -x $bin/dockerd && -x $bin/docker ]] || die "$bin/dockerd is missing: run hack/deps.sh docker"
	[[ -S $csock ]] || die "$csock is not a socket (start containerd first: hack/containerd.sh)"
	local sock="$dir/docker.sock"
	((${#sock} < 100)) || die "DIR is too long for a unix socket path: $sock"

	local pid
	pid=$(daemon_pid "$dir/docker.pid" "$(config_file "$dir")")
	if [[ -n $pid ]]; then
		[[ $(cat "$dir/version" 2>/dev/null) == "$ver" ]] || die "another docker version is already running for $dir (pid $pid)"
		printf '%s\n' "$sock"
		return 0
	fi
	if [[ -e $dir && ! -e $dir/$MARKER ]] && [[ -n $(ls -A "$dir" 2>/dev/null) ]]; then
		die "$dir exists, is not empty, and was not made by hack/dockerd.sh"
	fi
	mkdir -p "$dir"/{data,exec}
	: >"$dir/$MARKER"
	printf '%s\n' "$ver" >"$dir/version"
	# Remember which /sys/fs/cgroup/*/docker existed before: stop removes only
	# those this instance created.
	local mnt
	if [[ ! -e $dir/cgroups-before ]]; then
		while IFS= read -r mnt; do
			[[ -d $mnt/docker ]] && printf '%s\n' "$mnt/docker"
		done < <(cgroup_mounts) >"$dir/cgroups-before"
	fi
	local config="$dir/daemon.json"
	if [[ -n ${OOMGUARD_DOCKERD_CONFIG:-} ]]; then
		config=$(realpath -e -- "$OOMGUARD_DOCKERD_CONFIG") || die "OOMGUARD_DOCKERD_CONFIG: no file $OOMGUARD_DOCKERD_CONFIG"
	else
		lane_oomguard_configs "${OOMGUARD_SHIM_DIR:-$REPO/target/debug}/containerd-shim-oomguard-v2" "$dir/oomguard"
		sed "s#/etc/oomguard/#$dir/oomguard/#g" "$REPO/hack/docker/daemon.json" >"$config"
	fi
	printf '%s\n' "$config" >"$dir/config-file"
	local driver=overlay2
	overlay_works "$dir/data" || driver=vfs
	printf '%s\n' "$driver" >"$dir/storage-driver"
	printf '/%s\n' "$(cgroup_parent "$dir")" >"$dir/cgroup-parent"

	local -a flags=(
		--config-file "$config"
		--containerd "$csock"
		--data-root "$dir/data"
		--exec-root "$dir/exec"
		--pidfile "$dir/docker.pid"
		-H "unix://$sock"
		--storage-driver "$driver"
		--iptables=false --ip-forward=false --ip-masq=false --bridge=none
		--userland-proxy=false
		--cgroup-parent "$(<"$dir/cgroup-parent")"
		--log-level debug
	)
	rm -f "$sock" "$dir/docker.pid"
	printf '\n===== %s start: dockerd %s\n' "$(date -Is)" "$ver" >>"$dir/dockerd.log"
	# dockerd finds docker-init and docker-proxy on PATH.
	env PATH="$bin:${PATH:-/usr/sbin:/usr/bin:/sbin:/bin}" setsid "$bin/dockerd" "${flags[@]}" \
		</dev/null >>"$dir/dockerd.log" 2>&1 &
	pid=$!
	local i
	for ((i = 0; i < 300; i++)); do
		if ! alive "$pid"; then
			warn "dockerd $ver exited during start-up; last lines of $dir/dockerd.log:"
			tail -n 30 "$dir/dockerd.log" | sed 's/^/    /' >&2
			exit 1
		fi
		if [[ -S $sock ]] && timeout 5 "$bin/docker" -H "unix://$sock" version >/dev/null 2>&1; then
			printf '%s\n' "$sock"
			return 0
		fi
		sleep 0.1
	done
	warn "dockerd $ver (pid $pid) did not answer on $sock within 30 s; last lines of $dir/dockerd.log:"
	tail -n 30 "$dir/dockerd.log" | sed 's/^/    /' >&2
	kill -TERM "$pid" 2>/dev/null || true
	exit 1
}

cmd_stop() {
	(($# == 1)) || usage 2 >&2
	local dir
	dir=$(abs_dir "$1")
	need_root
	[[ -e $dir ]] || return 0
	[[ -e $dir/$MARKER ]] || die "$dir was not made by hack/dockerd.sh ($MARKER missing): not touching it"
	local ver pid bin="" sock="$dir/docker.sock"
	ver=$(cat "$dir/version" 2>/dev/null || true)
	[[ -z $ver ]] || bin=$(bin_dir "$ver")
	pid=$(daemon_pid "$dir/docker.pid" "$(config_file "$dir")")

	if [[ -n $pid && -n $bin && -S $sock ]]; then
		local -a ids=()
		mapfile -t ids < <(timeout 10 "$bin/docker" -H "unix://$sock" ps -aq 2>/dev/null || true)
		if ((${#ids[@]})); then
			timeout 60 "$bin/docker" -H "unix://$sock" rm -f "${ids[@]}" >/dev/null 2>&1 || true
		fi
	fi
	if [[ -n $pid ]]; then
		stop_pid dockerd "$pid" 15
	fi

	local m round
	for ((round = 0; round < 5; round++)); do
		local -a mps=()
		mapfile -t mps < <(mounts_under "$dir")
		((${#mps[@]})) || break
		for m in "${mps[@]}"; do
			umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
		done
	done
	mapfile -t mps < <(mounts_under "$dir")
	((${#mps[@]} == 0)) || die "still mounted under $dir: ${mps[*]}"

	local parent mnt
	parent=$(cgroup_parent "$dir")
	while IFS= read -r mnt; do
		if [[ -d $mnt/$parent ]]; then
			find "$mnt/$parent" -depth -type d -exec rmdir {} \; 2>/dev/null || true
			[[ -d $mnt/$parent ]] && warn "could not remove cgroup $mnt/$parent"
		fi
		if [[ -d $mnt/docker ]] && ! grep -qxF "$mnt/docker" "$dir/cgroups-before" 2>/dev/null; then
			rmdir "$mnt/docker" 2>/dev/null || true
		fi
	done < <(cgroup_mounts)

	rm -rf --one-file-system -- "$dir"
	[[ ! -e $dir ]] || die "could not remove $dir"
}

cmd_image() {
	(($# == 1)) || usage 2 >&2
	local dir ver bin sock
	dir=$(abs_dir "$1")
	need_root
	[[ -e $dir/$MARKER ]] || die "$dir was not made by hack/dockerd.sh"
	ver=$(cat "$dir/version")
	bin=$(bin_dir "$ver")
	sock="$dir/docker.sock"
	local -a docker=("$bin/docker" -H "unix://$sock")
	if ! "${docker[@]}" image inspect "$IMAGE" >/dev/null 2>&1; then
		local rootfs
		rootfs=$("$REPO/hack/rootfs.sh")
		tar -C "$rootfs" --sort=name --numeric-owner --owner=0 --group=0 \
			--exclude=./.oomguard-rootfs -cf - . |
			"${docker[@]}" import --change 'CMD ["/bin/sh"]' - "$IMAGE" >/dev/null ||
			die "docker import failed"
	fi
	printf '%s\n' "$IMAGE"
}

cmd_env() {
	(($# == 2)) || usage 2 >&2
	local ver=$1 dir bin
	bin=$(bin_dir "$ver")
	dir=$(abs_dir "$2")
	local q_sock q_bin
	printf -v q_sock '%q' "unix://$dir/docker.sock"
	printf -v q_bin '%q' "$bin"
	cat <<EOF
export DOCKER_HOST=$q_sock
export DOCKER=$q_bin/docker
export PATH=$q_bin:\$PATH
EOF
}

(($#)) || usage 2 >&2
sub=$1
shift
case $sub in
start) cmd_start "$@" ;;
stop) cmd_stop "$@" ;;
image) cmd_image "$@" ;;
env) cmd_env "$@" ;;
-h | --help | help) usage 0 ;;
*)
	echo "dockerd.sh: unknown command '$sub'" >&2
	usage 2 >&2
	;;
esac
