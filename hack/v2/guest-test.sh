#!/bin/sh
# The cgroup v2 lane's scenarios, run inside the VM (busybox sh) by /init as
# /payload/test.sh. hack/v2/run.sh puts it in the payload together with
# /payload/env (VERSION, REPEAT, REPEAT_PAR, SCENARIOS, RUNTIMES, SERIAL, DUMP,
# CGROUP, BENCH) and the shim.
#
# CGROUP=v1: the memory controller is on cgroup v1 (guest-init.sh mounted the
# hierarchies as a hybrid host has them). BENCH=N: no scenarios; N rounds of
# `oomguard-bench latency` (stock shim and oomguard interleaved) instead,
# each line printed as OOMGUARD-BENCH.
#
# A private containerd of VERSION runs with /payload/bin (the oomguard shim)
# first on its PATH, `ctr events` is captured, and every scenario runs under
# each runtime in RUNTIMES (runc = io.containerd.runc.v2, the stock shim;
# oomguard = io.containerd.oomguard.v2) where it makes sense.
#
# Output protocol (every other line is informational):
#   OOMGUARD-PLAN <n>            results this run will print
#   OOMGUARD-STEP <scenario> <seconds>
#   OOMGUARD-RESULT <scenario> <runtime> exit=<ctr's exit code> events=<topics>
#       oom_kill=<n|-> id=<container id> exits=<process:status,...> secs=<s|->
#     events: the /tasks/* topics of that container in the order `ctr events`
#     printed them ("-": none); oom_kill: memory.events of the container's
#     parent cgroup (hierarchical, so it survives the container's own cgroup;
#     "-": unreadable, and always on v1, whose counters are not hierarchical);
#     exits: every /tasks/exit of the container, exec id or container id,
#     ':', exit_status; secs: how long `ctr run` took ("-": not timed).
#   OOMGUARD-DONE <n>            number of RESULT lines printed
#   OOMGUARD-ERROR ...           the lane itself broke
#   OOMGUARD-LOG ...             the oomguard shim's verdict lines, errors
#   OOMGUARD-KMSG ...            OOM kills the kernel logged (memcg vs global)
set -u
. /payload/env
: "${VERSION:=1.7}" "${REPEAT:=3}" "${REPEAT_PAR:=1}" "${RUNTIMES:=runc oomguard}"
: "${SCENARIOS:=init-oom child-oom-group-on child-oom-group-off kgroup-on kgroup-off parent-limit clean-exit kill-9 exec-sigterm twenty rm-gone global-oom repeat warning-high warning-calm}"
: "${CGROUP:=v2}" "${BENCH:=0}" "${GLOBAL_REPEAT:=1}"
# Where a cgroup path's memcg is.
CGROOT=/sys/fs/cgroup
[ "$CGROUP" = v1 ] && CGROOT=/sys/fs/cgroup/memory
# How long the global-oom container sleeps after its dd was killed: only a
# live TaskOOM (and oom_group's kill) ends it sooner.
GLOBAL_SLEEP=300
RUNTIMES=$(echo "$RUNTIMES" | tr ',' ' ')
SCENARIOS=$(echo "$SCENARIOS" | tr ',' ' ')

export PATH=/payload/bin:/usr/local/containerd/$VERSION/bin:/usr/sbin:/usr/bin:/sbin:/bin
R=/rootfs
LIMIT=33554432
DD='dd if=/dev/zero of=/dev/null bs=100M count=1'
W=/tmp/og
REC=$W/records
EV=$W/events.log
mkdir -p $W
: >$REC

now() { cut -d' ' -f1 /proc/uptime; }
err() { echo "OOMGUARD-ERROR $*"; }
# fault RUNTIME MSG: under the stock shim a failed step means the lane is
# broken (an error); under oomguard it is the shim's failure, which its
# results show (so the Rust test can say which assertion failed).
fault() {
	if [ "$1" = runc ]; then
		shift
		err "$*"
	else
		shift
		echo "OOMGUARD-INFO $*"
	fi
}

rtype() {
	case $1 in
	runc) echo io.containerd.runc.v2 ;;
	oomguard) echo io.containerd.oomguard.v2 ;;
	*) echo "unknown-runtime-$1" ;;
	esac
}

# Which runtimes a scenario runs under, and how many containers it makes.
runtimes_for() {
	case $1 in
	# The oomguard TOML file means nothing to the stock shim. The stock shim
	# would sleep out the global OOM container (nothing ends it early).
	child-oom-group-off | global-oom | warning-*) echo "$RUNTIMES" | tr ' ' '\n' | grep -x oomguard ;;
	*) echo "$RUNTIMES" ;;
	esac
}
count_for() {
	case $1 in
	twenty) echo 20 ;;
	repeat) echo "$REPEAT" ;;
	global-oom) echo "$GLOBAL_REPEAT" ;;
	*) echo 1 ;;
	esac
}

# ------------------------------------------------------------------ containerd
cat >$W/config.toml <<'EOF'
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
# CRI is not used here; leaving it out saves start-up time under TCG.
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images"]
[grpc]
  address = "/run/containerd/containerd.sock"
[debug]
  level = "debug"
EOF

echo "OOMGUARD-INFO containerd $(containerd --version 2>&1 | head -1)"
echo "OOMGUARD-INFO runc $(runc --version 2>&1 | head -1)"
echo "OOMGUARD-INFO shim $(ls -l /payload/bin/containerd-shim-oomguard-v2 2>&1)"
containerd --config $W/config.toml >$W/containerd.log 2>&1 &
CTD_PID=$!
up=0
i=0
while [ $i -lt 300 ]; do
	if ctr version >/dev/null 2>&1; then
		up=1
		break
	fi
	kill -0 $CTD_PID 2>/dev/null || break
	sleep 0.1
	i=$((i + 1))
done
if [ $up != 1 ]; then
	err "containerd $VERSION did not come up"
	tail -n 40 $W/containerd.log | sed 's/^/OOMGUARD-LOG containerd: /'
	exit 1
fi
echo "OOMGUARD-CONTAINERD-UP $VERSION uptime=$(now)"

ctr events >$EV 2>&1 &
EV_PID=$!
# Under TCG on a loaded host the guest can stall for seconds; ctr's default
# 10 s dial timeout once failed a run that never reached the shim. (Defined
# after `ctr events &`, whose pid must be ctr's own.)
ctr() { command ctr --connect-timeout 60s "$@"; }

# wait_event ID TOPIC [TENTHS]: until `ctr events` printed TOPIC for ID.
wait_event() {
	_n=0
	while [ $_n -lt "${3:-300}" ]; do
		grep -q "$2 .*\"container_id\":\"$1\"" $EV && return 0
		sleep 0.1
		_n=$((_n + 1))
	done
	return 1
}

# Warm-up (page cache, and proof that the event stream works): one clean
# container under the first runtime, not part of the results. (Wait for its
# /tasks/exit: containerd 2.x's stock shim sometimes exits before its
# /tasks/delete is sent.)
for rt in $RUNTIMES; do
	ctr run --rm --runtime "$(rtype $rt)" --rootfs $R warm-$rt /bin/true </dev/null >$W/warm-$rt.out 2>&1 ||
		err "warm-up under $rt failed: $(tr '\n' ' ' <$W/warm-$rt.out)"
	wait_event warm-$rt /tasks/exit 100 || err "no /tasks/exit event for warm-$rt in ctr events"
	break
done
echo "OOMGUARD-WARM uptime=$(now)"

# ------------------------------------------------------------------ helpers
plan=0
for sc in $SCENARIOS; do
	n=$(count_for $sc)
	for rt in $(runtimes_for $sc); do plan=$((plan + n)); done
done
[ "$BENCH" != 0 ] || echo "OOMGUARD-PLAN $plan"

# record ID SCENARIO RUNTIME EXIT CGROUP_DIR [SECS]
record() {
	_k=-
	if [ -r "$5/memory.events" ]; then
		_k=$(awk '$1 == "oom_kill" { print $2 }' "$5/memory.events")
	fi
	echo "$1 $2 $3 $4 ${_k:--} ${6:--}" >>$REC
	# anything ctr or the container printed (errors, "Killed"), for the console
	if [ -s $W/$1.out ]; then
		head -c 600 $W/$1.out | tr '\n' ' ' | sed "s/^/OOMGUARD-OUT $1: /"
		echo
	fi
}

# run_one SCENARIO RUNTIME ID CGROUP_PARENT CMD [ctr run options...]
# ctr run --rm in the foreground; the container's cgroup is PARENT/c.
run_one() {
	_sc=$1 _rt=$2 _id=$3 _cg=$4 _cmd=$5
	shift 5
	mkdir -p $CGROOT$_cg
	_t0=$(now)
	ctr run --rm --runtime "$(rtype $_rt)" --cgroup $_cg/c "$@" --rootfs $R $_id /bin/sh -c "$_cmd" </dev/null >$W/$_id.out 2>&1
	_rc=$?
	record $_id $_sc $_rt $_rc $CGROOT$_cg "$(awk -v a="$_t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')"
}

# spec_file FILE ID OOM_GROUP CMD: a complete OCI spec for `ctr run --config`
# with the unified memory.oom.group (ctr has no flag for unified resources).
spec_file() {
	cat >$1 <<EOF
{
  "ociVersion": "1.0.2",
  "process": {
    "terminal": false,
    "user": { "uid": 0, "gid": 0 },
    "args": [ "/bin/sh", "-c", "$4" ],
    "env": [ "PATH=/bin" ],
    "cwd": "/",
    "noNewPrivileges": true
  },
  "root": { "path": "$R", "readonly": true },
  "hostname": "$2",
  "mounts": [
    { "destination": "/proc", "type": "proc", "source": "proc" },
    { "destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": [ "nosuid", "strictatime", "mode=755", "size=65536k" ] },
    { "destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": [ "nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620" ] },
    { "destination": "/sys", "type": "sysfs", "source": "sysfs", "options": [ "nosuid", "noexec", "nodev", "ro" ] }
  ],
  "linux": {
    "cgroupsPath": "/og/$2/c",
    "resources": {
      "memory": { "limit": $LIMIT },
      "unified": { "memory.oom.group": "$3" }
    },
    "namespaces": [ { "type": "pid" }, { "type": "ipc" }, { "type": "uts" }, { "type": "mount" }, { "type": "network" } ]
  }
}
EOF
}

# ------------------------------------------------------------------ scenarios
# Each takes the runtime's short name.

sc_init_oom() {
	run_one init-oom $1 init-oom-$1 /og/init-oom-$1 "$DD" --memory-limit $LIMIT
}

# dd is OOM-killed, the shell exits 0. oomguard's oom_group (default on) makes it 137.
sc_child_oom_group_on() {
	run_one child-oom-group-on $1 cog-on-$1 /og/cog-on-$1 "$DD; exit 0" --memory-limit $LIMIT
}

sc_child_oom_group_off() {
	printf 'oom_group = false\n' >$W/no-group.toml
	run_one child-oom-group-off $1 cog-off-$1 /og/cog-off-$1 "$DD; exit 0" --memory-limit $LIMIT \
		--runtime-config-path $W/no-group.toml
}

# The kernel's own group kill: OCI linux.resources.unified["memory.oom.group"]
# = "1" (runc writes it to the container's cgroup; the kernel kills the shell
# too) and "0" (oomguard honours it: oom_group off for this container).
sc_kgroup() { # RUNTIME 0|1
	_id=kgroup-$2-$1
	_sc=kgroup-on
	[ "$2" = 1 ] || _sc=kgroup-off
	spec_file $W/$_id.json $_id "$2" "$DD; exit 0"
	mkdir -p $CGROOT/og/$_id
	ctr run --rm --runtime "$(rtype $1)" --config $W/$_id.json $_id </dev/null >$W/$_id.out 2>&1
	record $_id $_sc $1 $? $CGROOT/og/$_id
}
sc_kgroup_on() { sc_kgroup $1 1; }
sc_kgroup_off() { sc_kgroup $1 0; }

# The limit is on a parent cgroup only; the container has none.
sc_parent_limit() {
	_p=/sys/fs/cgroup/plim-$1
	mkdir -p $_p
	echo $LIMIT >$_p/memory.max || err "cannot set $_p/memory.max"
	run_one parent-limit $1 plim-$1 /plim-$1 "$DD"
}

# The memory warning on v2 (oom_report = "stderr" puts it in ctr's output):
# a parent's memory.high of 24 MiB throttles a 40 MiB allocation (the kernel
# counts the throttling as memory stall: the PSI trigger fires), once per
# episode; a calm container is never warned.
# Prints: OOMGUARD-WARNINGS <scenario> <runtime> <lines>
warnings_of() {
	echo "OOMGUARD-WARNINGS $1 $2 $(grep -c 'oomguard: memory warning: ' $W/$3.out)"
}
sc_warning_high() {
	printf 'oom_report = "stderr"\n' >$W/report.toml
	mkdir -p /sys/fs/cgroup/whigh-$1
	echo 25165824 >/sys/fs/cgroup/whigh-$1/memory.high || err "cannot set memory.high"
	run_one warning-high $1 whigh-$1 /whigh-$1 "dd if=/dev/zero of=/dev/null bs=40M count=1; echo done" \
		--memory-limit 67108864 --runtime-config-path $W/report.toml
	warnings_of warning-high $1 whigh-$1
}
sc_warning_calm() {
	printf 'oom_report = "stderr"\n' >$W/report-calm.toml
	run_one warning-calm $1 wcalm-$1 /og/wcalm-$1 "dd if=/dev/zero of=/dev/null bs=8M count=1; sleep 3; echo done" \
		--memory-limit 67108864 --runtime-config-path $W/report-calm.toml
	warnings_of warning-calm $1 wcalm-$1
}

sc_clean_exit() {
	run_one clean-exit $1 clean-$1 /og/clean-$1 "exit 0" --memory-limit $LIMIT
}

# start_bg ID CGPARENT RUNTIME: ctr run (foreground, in the background) of a sleeper,
# waits for /tasks/start. Sets BG_PID.
start_bg() {
	mkdir -p $CGROOT$2
	ctr run --rm --runtime "$(rtype $3)" --cgroup $2/c --memory-limit $LIMIT --rootfs $R $1 /bin/sleep 1000 </dev/null >$W/$1.out 2>&1 &
	BG_PID=$!
	wait_event $1 /tasks/start || fault $3 "$1 did not start"
}

# The user's SIGKILL: 137, and no OOM.
sc_kill_9() {
	_id=kill9-$1
	start_bg $_id /og/$_id $1
	ctr task kill -s SIGKILL $_id >>$W/$_id.out 2>&1 || fault $1 "ctr task kill $_id failed"
	wait $BG_PID
	record $_id kill-9 $1 $? $CGROOT/og/$_id
}

# SIGTERM to an exec process: the exec exits 143 (recorded), then the init is
# killed with SIGKILL.
sc_exec_sigterm() {
	_id=term-$1
	start_bg $_id /og/$_id $1
	ctr task exec --exec-id term $_id /bin/sleep 1000 </dev/null >$W/$_id.exec.out 2>&1 &
	_epid=$!
	wait_event $_id /tasks/exec-started || fault $1 "exec in $_id did not start"
	ctr task kill --exec-id term -s SIGTERM $_id >>$W/$_id.out 2>&1 || fault $1 "ctr task kill --exec-id term $_id failed"
	wait $_epid
	_ecode=$?
	ctr task kill -s SIGKILL $_id >>$W/$_id.out 2>&1 || fault $1 "ctr task kill $_id failed"
	wait $BG_PID
	cat $W/$_id.exec.out >>$W/$_id.out
	record $_id exec-sigterm $1 $_ecode $CGROOT/og/$_id
}

# 20 containers OOMing at once.
# (Never a bare `wait`: containerd and ctr events are children too.)
sc_twenty() {
	_i=1
	_pids=
	while [ $_i -le 20 ]; do
		run_one twenty $1 twenty-$1-$_i /og/twenty-$1-$_i "$DD" --memory-limit $LIMIT &
		_pids="$_pids $!"
		_i=$((_i + 1))
	done
	for _p in $_pids; do wait $_p; done
}

# --rm with ctr's default cgroup (/NAMESPACE/ID), in a namespace of its own:
# the cgroup is gone as soon as the task is deleted.
sc_rm_gone() {
	_ns=rmgone-$1
	_id=rm-$1
	ctr -n $_ns run --rm --runtime "$(rtype $1)" --memory-limit $LIMIT --rootfs $R $_id /bin/sh -c "$DD" </dev/null >$W/$_id.out 2>&1
	_code=$?
	[ -d $CGROOT/$_ns/$_id ] && echo "OOMGUARD-INFO $CGROOT/$_ns/$_id still exists after ctr run --rm"
	record $_id rm-gone $1 $_code $CGROOT/$_ns
}

# The init OOM, REPEAT times (REPEAT_PAR at once).
sc_repeat() {
	_i=1
	while [ $_i -le "$REPEAT" ]; do
		_j=0
		_pids=
		while [ $_j -lt "$REPEAT_PAR" ] && [ $_i -le "$REPEAT" ]; do
			run_one repeat $1 rep-$1-$_i /og/rep-$1-$_i "$DD" --memory-limit $LIMIT &
			_pids="$_pids $!"
			_i=$((_i + 1))
			_j=$((_j + 1))
		done
		for _p in $_pids; do wait $_p; done
	done
}

# A global (VM-wide) OOM kill of a process that is not the container's
# init: the container has no limit of its own; dd asks for nearly all of the
# VM's memory (under MemTotal, so the allocation itself is allowed) and the
# kernel's global OOM killer takes it, the largest process; the shell then
# sleeps. No memcg notification fires (on v1 only the kernel log and the
# counter tell); a live TaskOOM and oom_group's kill end the container long
# before the sleep would. Runs alone (the scenario loop runs one at a time).
sc_global_oom() {
	_i=1
	while [ $_i -le "$GLOBAL_REPEAT" ]; do
		# More than is available (a global OOM), less than MemTotal (allowed),
		# and no more than needed: zeroing memory is slow under TCG.
		_mb=$(awk '/^MemTotal/ { t = $2 } /^MemAvailable/ { a = $2 } END { m = a * 1.1 + 65536; if (m > t * 0.95) m = t * 0.95; printf "%d", m / 1024 }' /proc/meminfo)
		run_one global-oom $1 global-$1-$_i /og/global-$1-$_i "dd if=/dev/zero of=/dev/null bs=${_mb}M count=1; sleep $GLOBAL_SLEEP"
		echo "OOMGUARD-INFO global-oom $_i: dd of ${_mb} MB"
		_i=$((_i + 1))
	done
}

# ------------------------------------------------------------------ bench
# (busybox sed has no -u: each line is echoed as it comes instead)
if [ "$BENCH" != 0 ]; then
	echo "OOMGUARD-PLAN 0"
	echo "OOMGUARD-INFO bench: $BENCH rounds of oomguard-bench latency (cgroup $CGROUP)"
	mkdir -p $W/bench
	oomguard-bench latency --ctr "$(command -v ctr)" --address /run/containerd/containerd.sock \
		--namespace bench --rootfs $R --work $W/bench --cgroup-parent /ogbench \
		--kind stock,io.containerd.runc.v2 --kind oomguard,io.containerd.oomguard.v2 \
		--runs "$BENCH" 2>$W/bench.err | while IFS= read -r l; do echo "OOMGUARD-BENCH $l"; done
	sed 's/^/OOMGUARD-INFO bench: /' $W/bench.err
	# oomguard's own timings of each TaskOOM (hack/bench.sh reads them)
	grep -E 'publishing TaskOOM|topic=/tasks/oom .*forward_ms' $W/containerd.log | sed 's/^/OOMGUARD-SHIM-LOG /'
	echo "OOMGUARD-DONE 0"
	kill $CTD_PID $EV_PID 2>/dev/null
	exit 0
fi

# ------------------------------------------------------------------ run
# A heartbeat, so a slow run (TCG on a busy host) can be told from a hung one.
(
	while sleep 30; do
		echo "OOMGUARD-HEARTBEAT uptime=$(now) load=\"$(cut -d' ' -f1-3 /proc/loadavg)\" results=$(wc -l <$REC) ctr=$(pidof ctr | wc -w) runc=$(pidof runc | wc -w) shims=$(pidof containerd-shim-runc-v2 | wc -w)+$(pidof containerd-shim-oomguard-v2 | wc -w) mem_avail_kb=$(awk '/^MemAvailable/ { print $2 }' /proc/meminfo)"
	done
) &
HB_PID=$!
# The runtimes of a scenario run side by side (same conditions for both, and
# half the wall time on 2 CPUs), except the twenty (40 at once would need
# more memory than the VM has) and when SERIAL=1.
for sc in $SCENARIOS; do
	fn=sc_$(echo $sc | tr '-' '_')
	if ! type $fn >/dev/null 2>&1; then
		err "unknown scenario $sc"
		continue
	fi
	t0=$(now)
	if [ $sc = twenty ] || [ "${SERIAL:-0}" = 1 ]; then
		for rt in $(runtimes_for $sc); do $fn $rt; done
	else
		pids=
		for rt in $(runtimes_for $sc); do
			$fn $rt &
			pids="$pids $!"
		done
		for p in $pids; do wait $p; done
	fi
	echo "OOMGUARD-STEP $sc $(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')"
done

# Let the last events arrive: every recorded container's /tasks/exit, then a
# moment for anything published after it (a late TaskOOM, /tasks/delete).
for id in $(awk '{ print $1 }' $REC); do
	wait_event $id /tasks/exit 50 || echo "OOMGUARD-INFO no /tasks/exit for $id"
done
sleep 2
kill $EV_PID $HB_PID 2>/dev/null

awk -v recfile=$REC '
BEGIN {
	while ((getline l < recfile) > 0) { split(l, f, " "); ids[++n] = f[1]; rec[f[1]] = l }
}
{
	t = ""
	for (i = 1; i <= NF; i++) if ($i ~ /^\/tasks\//) { t = $i; break }
	if (t == "") next
	if (!match($0, /"container_id":"[^"]*"/)) next
	cid = substr($0, RSTART + 16, RLENGTH - 17)
	if (!(cid in rec)) next
	ev[cid] = ev[cid] (ev[cid] == "" ? "" : ",") t
	if (t == "/tasks/exit") {
		st = 0
		if (match($0, /"exit_status":[0-9]+/)) st = substr($0, RSTART + 14, RLENGTH - 14)
		p = cid
		if (match($0, /"id":"[^"]*"/)) p = substr($0, RSTART + 6, RLENGTH - 7)
		ex[cid] = ex[cid] (ex[cid] == "" ? "" : ",") p ":" st
	}
}
END {
	for (k = 1; k <= n; k++) {
		id = ids[k]
		split(rec[id], f, " ")
		printf "OOMGUARD-RESULT %s %s exit=%s events=%s oom_kill=%s id=%s exits=%s secs=%s\n", f[2], f[3], f[4], (id in ev ? ev[id] : "-"), f[5], id, (id in ex ? ex[id] : "-"), f[6]
	}
	print "OOMGUARD-DONE " n
}' $EV

# What the shim decided, and what the kernel did.
grep -E 'verdict|level=error|pressure:|publishing TaskOOM' $W/containerd.log | grep -v 'warm-' | head -n 400 | cut -c1-400 | sed 's/^/OOMGUARD-LOG /'
memcg=$(dmesg | grep -c 'Memory cgroup out of memory: Killed process')
global=$(dmesg | grep 'Out of memory: Killed process' | grep -vc 'Memory cgroup')
planned=$(awk '$2 == "global-oom"' $REC | wc -l)
echo "OOMGUARD-KMSG memcg_kills=$memcg global_kills=$global global_oom_scenarios=$planned"
dmesg | grep 'Out of memory: Killed process' | grep -v 'Memory cgroup' | cut -c1-200 | sed 's/^/OOMGUARD-INFO global OOM kill: /'
[ "$global" = "$planned" ] || err "the VM had $global global OOM kills, $planned planned (global-oom): give it more memory (run.sh --mem)"
if [ -n "${DUMP:-}" ]; then
	sed 's/^/OOMGUARD-EV /' $EV
	sed 's/^/OOMGUARD-CTD /' $W/containerd.log
fi
kill $CTD_PID 2>/dev/null
exit 0
