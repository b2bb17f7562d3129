#!/usr/bin/env bash
# Run a private containerd (1.6, 1.7 or 2.x) for tests.
#
# usage: hack/containerd.sh start VER DIR [SHIM_DIR]
#        hack/containerd.sh kill DIR [SIGNAL]
#        hack/containerd.sh release-events DIR
#        hack/containerd.sh stop DIR
#        hack/containerd.sh env VER DIR
#        hack/containerd.sh config VER DIR
#
#   start  VER is 1.6, 1.7 or 2 (binaries from hack/deps.sh under .cache/containerd/VER).
#          Writes DIR/config.toml (config version 2 for 1.x, 3 for 2.x) and starts
#          containerd with root DIR/root, state DIR/state, socket DIR/containerd.sock
#          (ttrpc: DIR/containerd.sock.ttrpc), debug log DIR/containerd.log, pid
#          DIR/containerd.pid. CRI is on, with restrict_oom_score_adj = true and the
#          runtimes "runc" (io.containerd.runc.v2, default) and "oomguard"
#          (io.containerd.oomguard.v2). containerd's PATH is SHIM_DIR (default
#          $REPO/target/debug), then .cache/containerd/VER/bin, then the usual PATH,
#          so containerd-shim-oomguard-v2 and the same version's
#          containerd-shim-runc-v2 are found. Waits (20 s at most) until the
#          socket answers and prints its path. Already running for DIR: prints the
#          socket path again. On a DIR whose containerd was killed (see kill),
#          start is a restart: same root, state and sockets, and containerd
#          reconnects to the shims still running.
#   kill   Sends SIGNAL (KILL, the default, or TERM) to DIR's containerd only
#          and waits (20 s at most) until it is gone. Shims, containers, sockets
#          and DIR stay, as after a containerd crash or upgrade; start again to
#          restart it on the same root and state.
#   release-events
#          After a start with OOMGUARD_HOLD_EVENTS=1: lets the shims started
#          before reach the new containerd's ttrpc socket (see below).
#   stop   Stops what start started for DIR: removes the tasks through containerd
#          (best effort), SIGTERM then (after 10 s) SIGKILL to containerd, SIGKILL
#          to leftover shims started for DIR (-address DIR/containerd.sock) and to
#          the processes in their containers' cgroups, removes those cgroups (and
#          the empty parents of namespaces named after DIR, never a shared one
#          like default or k8s.io) and the shims' sockets, unmounts everything
#          under DIR, and removes DIR. Quiet;
#          a DIR that does not exist is not an error.
#   env    Prints shell exports for using that containerd:
#          eval "$(hack/containerd.sh env 1.7 /tmp/og-1.7)"; ctr version
#   config Writes DIR/config.toml as start would, but without the built-in
#          "oomguard" runtime (an operator's file before oomguard), and prints
#          its path. A later start runs containerd on that file as it then is
#          (edited by a test, e.g. by "containerd-shim-oomguard-v2 install"),
#          not on a generated one; OOMGUARD_CONTAINERD_EXTRA is then unused.
#
# Environment for start:
#   OOMGUARD_SANDBOX_IMAGE     CRI sandbox (pause) image (default: containerd's own)
#   OOMGUARD_CONTAINERD_EXTRA  TOML appended to the generated config.toml (new
#                              tables only, e.g. more CRI runtimes; when it has
#                              a table ...containerd.runtimes.oomguard], the
#                              built-in "oomguard" runtime is left out)
#   OOMGUARD_CONTAINERD_ENV    extra "NAME=value" words for containerd's environment
#   OOMGUARD_HOLD_EVENTS=1     containerd serves ttrpc on DIR/containerd.sock.ttrpc.held;
#                              the path the shims already running send their
#                              events to (DIR/containerd.sock.ttrpc) appears only
#                              with release-events (a symlink to it). A test
#                              restarting containerd subscribes to its events
#                              first and then releases what the shims queued,
#                              so none is published before anyone listens.
set -euo pipefail
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MARKER=.oomguard-containerd

check_ver() {
	case $1 in
	1.6 | 1.7 | 2) ;;
	*) die "unknown containerd version '$1' (expected 1.6, 1.7 or 2)" ;;
	esac
}

toml_str() { # TOML basic string
	local s=$1
	s=${s//\\/\\\\}
	s=${s//\"/\\\"}
	printf '"%s"' "$s"
}

# Does OOMGUARD_CONTAINERD_EXTRA define the CRI runtime "oomguard" itself
# (e.g. hack/cri/containerd-*.toml)? Then the built-in table is left out.
extra_defines_oomguard() {
	[[ ${OOMGUARD_CONTAINERD_EXTRA:-} == *'.containerd.runtimes.oomguard]'* ]]
}

# containerd's ttrpc socket: held back from the shims on request (see
# OOMGUARD_HOLD_EVENTS).
ttrpc_socket() {
	if [[ ${OOMGUARD_HOLD_EVENTS:-} == 1 ]]; then
		printf '%s\n' "$1/containerd.sock.ttrpc.held"
	else
		printf '%s\n' "$1/containerd.sock.ttrpc"
	fi
}

# write_config VER DIR [BUILTIN_OOMGUARD]: BUILTIN_OOMGUARD 0 leaves the
# built-in "oomguard" runtime out.
write_config() {
	local ver=$1 dir=$2 sock="$2/containerd.sock" builtin=${3:-1}
	local sandbox=${OOMGUARD_SANDBOX_IMAGE:-}
	{
		if ((builtin)); then
			echo "# Written by hack/containerd.sh for containerd $ver; rewritten on every start."
		else
			echo "# Written by hack/containerd.sh config for containerd $ver; start uses it as it is."
		fi
		# The same for every version but the config's own version number.
		cat <<EOF
version = $([[ $ver == 2 ]] && echo 3 || echo 2)
root = $(toml_str "$dir/root")
state = $(toml_str "$dir/state")
temp = $(toml_str "$dir/tmp")
oom_score = 0

[grpc]
  address = $(toml_str "$sock")

[ttrpc]
  address = $(toml_str "$(ttrpc_socket "$dir")")

[debug]
  level = "debug"

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = $(toml_str "$dir/opt")
EOF
		if [[ $ver == 2 ]]; then
			cat <<EOF

  [plugins."io.containerd.nri.v1.nri"]
    socket_path = $(toml_str "$dir/nri.sock")

  [plugins."io.containerd.grpc.v1.cri"]
    disable_tcp_service = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"

  [plugins."io.containerd.cri.v1.runtime"]
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true

    [plugins."io.containerd.cri.v1.runtime".cni]
      bin_dirs = ["/usr/lib/cni", "/opt/cni/bin"]
      conf_dir = $(toml_str "$dir/cni/net.d")

    [plugins."io.containerd.cri.v1.runtime".containerd]
      default_runtime_name = "runc"

      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
EOF
			if ((builtin)) && ! extra_defines_oomguard; then
				cat <<EOF

      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.oomguard]
        runtime_type = "io.containerd.oomguard.v2"
        sandboxer = "podsandbox"
EOF
			fi
			if [[ -n $sandbox ]]; then
				printf '\n  [plugins."io.containerd.cri.v1.images".pinned_images]\n    sandbox = %s\n' "$(toml_str "$sandbox")"
			fi
		else
			cat <<EOF

  [plugins."io.containerd.grpc.v1.cri"]
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    disable_tcp_service = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
EOF
			if [[ -n $sandbox ]]; then
				printf '    sandbox_image = %s\n' "$(toml_str "$sandbox")"
			fi
			cat <<EOF

    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = $(toml_str "$dir/cni/net.d")

    [plugins."io.containerd.grpc.v1.cri".containerd]
      default_runtime_name = "runc"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
EOF
			if ((builtin)) && ! extra_defines_oomguard; then
				cat <<EOF

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.oomguard]
        runtime_type = "io.containerd.oomguard.v2"
EOF
				if [[ $ver == 1.7 ]]; then
					echo '        sandbox_mode = "podsandbox"'
				fi
			fi
			if [[ $ver == 1.7 ]]; then
				cat <<EOF

  [plugins."io.containerd.nri.v1.nri"]
    socket_path = $(toml_str "$dir/nri.sock")
EOF
			fi
		fi
		if [[ -n ${OOMGUARD_CONTAINERD_EXTRA:-} ]]; then
			printf '\n# OOMGUARD_CONTAINERD_EXTRA\n%s\n' "$OOMGUARD_CONTAINERD_EXTRA"
		fi
	} >"$dir/config.toml.new"
	mv -f "$dir/config.toml.new" "$dir/config.toml"
}

cmd_start() {
	(($# >= 2 && $# <= 3)) || usage 2 >&2
	local ver=$1 dir shim_dir
	check_ver "$ver"
	dir=$(abs_dir "$2")
	shim_dir=$(abs_dir "${3:-$REPO/target/debug}")
	need_root

	local bin
	bin=$(containerd_bin_dir "$ver")
	local b
	for b in containerd ctr containerd-shim-runc-v2; do
		[[ -x $bin/$b ]] || die "$bin/$b is missing: run hack/deps.sh"
	done
	[[ -x $shim_dir/containerd-shim-oomguard-v2 ]] ||
		warn "$shim_dir/containerd-shim-oomguard-v2 does not exist (yet): io.containerd.oomguard.v2 will not be found"

	local sock="$dir/containerd.sock"
	# sun_path holds 108 bytes including the NUL.
	((${#sock} + 11 < 108)) || die "DIR is too long for a unix socket path: $sock.ttrpc.held"

	local pid
	pid=$(daemon_pid "$dir/containerd.pid" "$dir/config.toml")
	if [[ -n $pid ]]; then
		local have
		have=$(cat "$dir/version" 2>/dev/null || echo '?')
		[[ $have == "$ver" ]] || die "containerd $have is already running for $dir (pid $pid): stop it first"
		printf '%s\n' "$sock"
		return 0
	fi

	if [[ -e $dir && ! -e $dir/$MARKER ]] && [[ -n $(ls -A "$dir" 2>/dev/null) ]]; then
		die "$dir exists, is not empty, and was not made by hack/containerd.sh"
	fi
	if [[ -e $dir/config.kept && $(cat "$dir/version" 2>/dev/null) != "$ver" ]]; then
		die "$dir/config.toml was made by 'config' for containerd $(cat "$dir/version"), not $ver"
	fi
	mkdir -p "$dir"/{root,state,tmp,opt,cni/net.d}
	: >"$dir/$MARKER"
	printf '%s\n' "$ver" >"$dir/version"
	printf '%s\n' "$shim_dir" >"$dir/shim_dir"
	# A config.toml made by 'config' is the operator's: used as it is.
	[[ -e $dir/config.kept ]] || write_config "$ver" "$dir"
	rm -f "$dir/containerd.pid" "$sock" "$sock.ttrpc" "$sock.ttrpc.held"

	local path="$shim_dir:$bin" d
	local -a path_dirs
	IFS=: read -r -a path_dirs <<<"${PATH:-}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	for d in "${path_dirs[@]}"; do
		[[ -n $d && ":$path:" != *":$d:"* ]] && path+=":$d"
	done
	local -a extra_env=()
	if [[ -n ${OOMGUARD_CONTAINERD_ENV:-} ]]; then
		read -r -a extra_env <<<"$OOMGUARD_CONTAINERD_ENV"
	fi
	printf '\n===== %s start: containerd %s\n' "$(date -Is)" "$ver" >>"$dir/containerd.log"
	# setsid: own session, so the caller's terminal or job control never signals it.
	# (A background job of a script is no process group leader, so setsid execs
	# in place and $! is containerd's pid.)
	env PATH="$path" "${extra_env[@]}" setsid "$bin/containerd" \
		--config "$dir/config.toml" --log-level debug \
		</dev/null >>"$dir/containerd.log" 2>&1 &
	pid=$!
	printf '%s\n' "$pid" >"$dir/containerd.pid"

	local i
	for ((i = 0; i < 200; i++)); do
		if ! kill -0 "$pid" 2>/dev/null; then
			warn "containerd $ver exited during start-up; last lines of $dir/containerd.log:"
			tail -n 30 "$dir/containerd.log" | sed 's/^/    /' >&2
			rm -f "$dir/containerd.pid"
			exit 1
		fi
		if [[ -S $sock ]] && timeout 5 "$bin/ctr" --address "$sock" version >/dev/null 2>&1; then
			printf '%s\n' "$sock"
			return 0
		fi
		sleep 0.1
	done
	warn "containerd $ver (pid $pid) did not answer on $sock within 20 s; last lines of $dir/containerd.log:"
	tail -n 30 "$dir/containerd.log" | sed 's/^/    /' >&2
	kill -TERM "$pid" 2>/dev/null || true
	exit 1
}

# ---------------------------------------------------------------- stop helpers

# pids of the shims started for DIR: a "-address DIR/containerd.sock" argument
# pair, or a containerd-shim* binary whose cwd is under DIR.
shim_pids() {
	local dir=$1 sock="$1/containerd.sock" p pid cwd i
	local -a args
	for p in /proc/[0-9]*; do
		pid=${p#/proc/}
		[[ $pid != "$$" && $pid != "$BASHPID" ]] || continue
		{ mapfile -d '' -t args <"$p/cmdline"; } 2>/dev/null || continue
		((${#args[@]})) || continue
		for ((i = 1; i < ${#args[@]}; i++)); do
			if [[ ${args[i - 1]} == -address || ${args[i - 1]} == --address ]] &&
				[[ ${args[i]} == "$sock" || ${args[i]} == "unix://$sock" ]]; then
				printf '%s\n' "$pid"
				continue 2
			fi
		done
		[[ ${args[0]##*/} == containerd-shim* ]] || continue
		cwd=$(readlink "$p/cwd" 2>/dev/null) || continue
		[[ $cwd == "$dir" || $cwd == "$dir"/* ]] && printf '%s\n' "$pid"
	done
	return 0
}

# All descendants of the given pids (not the pids themselves).
descendants() {
	(($#)) || return 0
	# /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces and
	# parentheses, so split after the last ") ".
	cat /proc/[0-9]*/stat 2>/dev/null | awk -v roots="$*" '
		BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) want[r[i]] = 1 }
		{
			k = split($0, a, ") "); split(a[k], f, " ")
			pid[NR] = $1; parent[$1] = f[2]; if (f[1] == "Z") zombie[$1] = 1
		}
		END {
			changed = 1
			while (changed) {
				changed = 0
				for (i = 1; i <= NR; i++) {
					p = pid[i]
					if (!(p in want) && (parent[p] in want)) { want[p] = 1; out[p] = 1; changed = 1 }
				}
			}
			for (p in out) if (!(p in zombie)) print p
		}'
}

# Task bundles of DIR: DIR/state/io.containerd.runtime.v2.task/NS/ID
bundles() {
	local dir=$1 b
	for b in "$dir"/state/io.containerd.runtime.v2.task/*/*; do
		[[ -d $b ]] && printf '%s\n' "$b"
	done
	return 0
}

# cgroupsPath of each bundle's config.json (cgroupfs form only).
bundle_cgroups() {
	local b cg
	while IFS= read -r b; do
		[[ -f $b/config.json ]] || continue
		cg=$(jq -r '.linux.cgroupsPath // empty' "$b/config.json" 2>/dev/null) || continue
		[[ -n $cg ]] || continue
		if [[ $cg == *:*:* ]]; then
			# systemd form slice:prefix:name (not used here: no systemd)
			continue
		fi
		[[ $cg == /* ]] || cg="/$cg"
		printf '%s\n' "$cg"
	done < <(bundles "$1")
}

cmd_stop() {
	(($# == 1)) || usage 2 >&2
	local dir
	dir=$(abs_dir "$1")
	need_root
	[[ -e $dir ]] || return 0
	[[ -e $dir/$MARKER ]] || die "$dir was not made by hack/containerd.sh ($MARKER missing): not touching it"

	local sock="$dir/containerd.sock" ver bin="" pid
	ver=$(cat "$dir/version" 2>/dev/null || true)
	if [[ -n $ver ]]; then bin=$(containerd_bin_dir "$ver"); fi
	pid=$(daemon_pid "$dir/containerd.pid" "$dir/config.toml")

	# What belongs to DIR, read before anything is removed.
	local -a cgroups=() all_cgroups=() namespaces=() sockets=()
	mapfile -t all_cgroups < <(bundle_cgroups "$dir")
	local b a
	while IFS= read -r b; do
		for a in "$b/address" "$b/bootstrap.json"; do
			[[ -f $a ]] || continue
			a=$(grep -o 'unix://[^"]*' "$a" | head -n1 || true)
			[[ -n $a ]] && sockets+=("${a#unix://}")
		done
	done < <(bundles "$dir")

	# FIFOs a client (ctr run -d) left for the shims' stdio: ctr makes them in
	# /run/containerd/fifo/N/ and removes them only when it waits for the task.
	local -a fifos=()
	local sp fd t
	while IFS= read -r sp; do
		for fd in /proc/"$sp"/fd/*; do
			t=$(readlink "$fd" 2>/dev/null) || continue
			[[ $t == /run/containerd/fifo/* ]] && fifos+=("$t")
		done
	done < <(shim_pids "$dir")

	# 1. Best effort: let containerd and the shims remove the tasks (this
	#    also removes their cgroups and mounts properly).
	if [[ -n $pid && -n $bin && -S $sock ]]; then
		local ctr=("$bin/ctr" --address "$sock") ns id
		mapfile -t namespaces < <(timeout 5 "${ctr[@]}" namespaces ls -q 2>/dev/null || true)
		for ns in "${namespaces[@]}"; do
			# A shim's socket is /run/containerd/s/sha256(SOCK/NS/ID) in 1.6,
			# 1.7 and 2.x. containerd leaves it behind when a shim dies, and
			# the name (it hashes DIR's socket path) is DIR's alone.
			while read -r id; do
				[[ -n $id ]] || continue
				for a in "$sock/$ns/$id" "$sock/$ns/$id-debug"; do
					sockets+=("/run/containerd/s/$(printf '%s' "$a" | sha256sum | cut -d' ' -f1)")
				done
			done < <(timeout 5 "${ctr[@]}" -n "$ns" containers ls -q 2>/dev/null || true)
			while read -r id _; do
				[[ -n $id && $id != TASK ]] || continue
				timeout 5 "${ctr[@]}" -n "$ns" tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
			done < <(timeout 5 "${ctr[@]}" -n "$ns" tasks ls 2>/dev/null || true)
			while read -r id _; do
				[[ -n $id && $id != TASK ]] || continue
				timeout 5 "${ctr[@]}" -n "$ns" tasks delete -f "$id" >/dev/null 2>&1 || true
			done < <(timeout 5 "${ctr[@]}" -n "$ns" tasks ls 2>/dev/null || true)
		done
	fi

	# 2. containerd: SIGTERM, 10 s, SIGKILL.
	if [[ -n $pid ]]; then
		stop_pid containerd "$pid" 10
	fi
	rm -f "$dir/containerd.pid"

	# 3. Leftover shims, their descendants, and whatever is in the cgroups
	#    of containers whose bundle is still there (not removed by step 1).
	mapfile -t cgroups < <(bundle_cgroups "$dir")
	local -a victims=()
	local round cg mnt f p
	for ((round = 0; round < 50; round++)); do
		local -a shims=()
		mapfile -t shims < <(shim_pids "$dir")
		victims=("${shims[@]}")
		if ((${#shims[@]})); then
			mapfile -t -O "${#victims[@]}" victims < <(descendants "${shims[@]}")
		fi
		for cg in "${cgroups[@]}"; do
			while IFS= read -r mnt; do
				f="$mnt$cg/cgroup.procs"
				[[ -f $f ]] || continue
				while IFS= read -r p; do
					[[ -n $p ]] && victims+=("$p")
				done <"$f"
			done < <(cgroup_mounts)
		done
		((${#victims[@]})) || break
		kill -KILL "${victims[@]}" 2>/dev/null || true
		sleep 0.1
	done
	((${#victims[@]} == 0)) || warn "processes still alive after SIGKILL: ${victims[*]}"

	# 4. Shim sockets (outside DIR, under /run/containerd/s/ or similar), and
	#    runc and runsc state of DIR's containers (a root under /run/containerd,
	#    e.g. /run/containerd/runc/NS/ID, whose bundle points into DIR).
	local s st root
	for s in "${sockets[@]}"; do
		[[ -S $s ]] && rm -f "$s"
	done
	for t in "${fifos[@]}"; do
		[[ -p $t ]] && rm -f "$t"
		rmdir "$(dirname "$t")" 2>/dev/null || true
	done
	if [[ -d /run/containerd ]]; then
		while IFS= read -r st; do
			jq -e --arg d "$dir/" '(.config.labels // [])[] | select(startswith("bundle=" + $d))' "$st" >/dev/null 2>&1 || continue
			id=$(basename "$(dirname "$st")")
			root=$(dirname "$(dirname "$st")")
			runc --root "$root" delete --force "$id" >/dev/null 2>&1 || rm -rf "$(dirname "$st")"
		done < <(find /run/containerd -maxdepth 5 -name state.json -type f 2>/dev/null)
		# runsc's state: ROOT/ID_sandbox:SID.state (+ .lock), left by a
		# container that joined a sandbox which died before it was deleted.
		while IFS= read -r st; do
			jq -e --arg d "$dir/" '(.bundleDir // "") | startswith($d)' "$st" >/dev/null 2>&1 || continue
			id=$(jq -r '.id | if type == "object" then .container_id else . end // empty' "$st" 2>/dev/null)
			root=$(dirname "$st")
			[[ -n $id ]] && runsc --root "$root" delete --force "$id" >/dev/null 2>&1
			rm -f "$st" "${st%.state}.lock"
		done < <(find /run/containerd -maxdepth 4 -name '*_sandbox:*.state' -type f 2>/dev/null)
	fi

	# 5. Mounts under DIR, latest first; lazily when busy.
	local m
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

	# 6. The containers' cgroups (a container the shim could not clean up),
	#    then, when empty, the parents of namespaces named after DIR (as the
	#    tests and the demo name theirs). A shared name (default, k8s.io) is
	#    left alone, as containerd leaves it: another instance may be making
	#    a container under it right now, and its runc create fails with
	#    ENOENT if the parent vanishes between its mkdirs.
	local parent
	for cg in "${cgroups[@]}"; do
		while IFS= read -r mnt; do
			[[ -d $mnt$cg ]] || continue
			# nested children first
			find "$mnt$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || true
			[[ -d $mnt$cg ]] && warn "could not remove cgroup $mnt$cg"
		done < <(cgroup_mounts)
	done
	for cg in "${all_cgroups[@]}"; do
		parent=$(dirname "$cg")
		[[ $parent != / ]] && namespaces+=("${parent#/}")
	done
	local own
	own=$(basename "$dir")
	for ns in "${namespaces[@]}"; do
		[[ -n $ns && $ns != */* && $ns != . && $ns != .. && $ns == *"$own"* ]] || continue
		while IFS= read -r mnt; do
			[[ -d $mnt/$ns ]] || continue
			# only when empty: no child cgroups and no processes
			[[ -z $(find "$mnt/$ns" -mindepth 1 -maxdepth 1 -type d -print -quit) ]] || continue
			[[ ! -s $mnt/$ns/cgroup.procs ]] || continue
			rmdir "$mnt/$ns" 2>/dev/null || true
		done < <(cgroup_mounts)
		# the per-namespace runc root, when empty
		rmdir "/run/containerd/runc/$ns" 2>/dev/null || true
	done

	# 7. DIR itself (never crossing into a mount that survived).
	rm -rf --one-file-system -- "$dir"
	[[ ! -e $dir ]] || die "could not remove $dir"
}

cmd_config() {
	(($# == 2)) || usage 2 >&2
	local ver=$1 dir
	check_ver "$ver"
	dir=$(abs_dir "$2")
	need_root
	if [[ -e $dir && ! -e $dir/$MARKER ]] && [[ -n $(ls -A "$dir" 2>/dev/null) ]]; then
		die "$dir exists, is not empty, and was not made by hack/containerd.sh"
	fi
	[[ -z $(daemon_pid "$dir/containerd.pid" "$dir/config.toml") ]] || die "containerd is running for $dir: stop it first"
	mkdir -p "$dir"/{root,state,tmp,opt,cni/net.d}
	: >"$dir/$MARKER"
	printf '%s\n' "$ver" >"$dir/version"
	write_config "$ver" "$dir" 0
	: >"$dir/config.kept"
	printf '%s\n' "$dir/config.toml"
}

cmd_kill() {
	(($# >= 1 && $# <= 2)) || usage 2 >&2
	local dir sig=${2:-KILL} pid i
	dir=$(abs_dir "$1")
	need_root
	case $sig in
	KILL | TERM) ;;
	*) die "unknown signal '$sig' (expected KILL or TERM)" ;;
	esac
	[[ -e $dir/$MARKER ]] || die "$dir was not made by hack/containerd.sh ($MARKER missing)"
	pid=$(daemon_pid "$dir/containerd.pid" "$dir/config.toml")
	[[ -n $pid ]] || die "no containerd is running for $dir"
	kill -"$sig" "$pid"
	for ((i = 0; i < 200; i++)); do
		alive "$pid" || break
		sleep 0.1
	done
	alive "$pid" && die "containerd (pid $pid) still running 20 s after SIG$sig"
	rm -f "$dir/containerd.pid"
}

cmd_release_events() {
	(($# == 1)) || usage 2 >&2
	local dir sock
	dir=$(abs_dir "$1")
	sock="$dir/containerd.sock"
	[[ -S $sock.ttrpc.held ]] || die "$sock.ttrpc.held is not a socket: start with OOMGUARD_HOLD_EVENTS=1 first"
	# A relative symlink, swapped in atomically: a shim connecting through
	# it reaches the held socket.
	ln -sfn "$(basename "$sock").ttrpc.held" "$sock.ttrpc.new"
	mv -fT "$sock.ttrpc.new" "$sock.ttrpc"
}

cmd_env() {
	(($# == 2)) || usage 2 >&2
	local ver=$1 dir bin
	check_ver "$ver"
	dir=$(abs_dir "$2")
	bin=$(containerd_bin_dir "$ver")
	local q_sock q_bin q_dir
	printf -v q_sock '%q' "$dir/containerd.sock"
	printf -v q_bin '%q' "$bin"
	printf -v q_dir '%q' "$dir"
	cat <<EOF
export OOMGUARD_CONTAINERD_VERSION=$ver
export OOMGUARD_CONTAINERD_DIR=$q_dir
export CONTAINERD_ADDRESS=$q_sock
export CONTAINERD_BIN=$q_bin
export CTR="$q_bin/ctr --address $q_sock"
export PATH=$q_bin:\$PATH
EOF
}

(($#)) || usage 2 >&2
sub=$1
shift
case $sub in
start) cmd_start "$@" ;;
stop) cmd_stop "$@" ;;
kill) cmd_kill "$@" ;;
release-events) cmd_release_events "$@" ;;
env) cmd_env "$@" ;;
config) cmd_config "$@" ;;
-h | --help | help) usage 0 ;;
*)
	echo "containerd.sh: unknown command '$sub'" >&2
	usage 2 >&2
	;;
esac
