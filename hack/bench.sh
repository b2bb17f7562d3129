#!/usr/bin/env bash
# Benchmark containerd-shim-oomguard-v2 against the stock containerd-shim-runc-v2
# of the same containerd, side by side in one run, and report oomguard/stock ratios.
#
# usage: hack/bench.sh [VER...]     (VER: containerd 1.6, 1.7 or 2; default 1.7)
#
# For each VER: start a private containerd (hack/containerd.sh) and measure both
# runtimes, io.containerd.runc.v2 ("stock") and io.containerd.oomguard.v2:
#   latency  M rounds, the two runtimes interleaved (ABBA order), after 3 warm-up
#            rounds: "ctr run --rm ... /bin/true" (create+start+exit+delete),
#            "ctr run -d ... /bin/sleep" (create+start) and "ctr tasks delete -f" +
#            "ctr containers delete" of that container (kill+delete); mean,
#            median, p90. Plus two floors for reference: "ctr version" (client
#            start-up + one RPC) and "runc run" of /bin/true without containerd.
#   idle     per runtime in turn: N containers running /bin/sleep, 2 s to settle,
#            then the shims' CPU time over T seconds (utime+stime of
#            /proc/PID/stat; on-CPU ns of a cpuacct cgroup the shims are
#            moved into for the window, which keeps the time of threads that
#            end in it), their context switches (live threads; how many
#            ended is shown), then per shim PSS, RSS and USS (smaps_rollup) and
#            threads (/proc/PID/status); then the containers are removed. The
#            host's kernel log lines in the window are counted too. Then the
#            same shims again for T seconds while `oomguard-bench kmsg-flood`
#            writes F lines/s to /dev/kmsg (kernel.printk_devkmsg set to "on"
#            for the window and always restored, also on failure or interrupt):
#            an idle oomguard shim keeps /dev/kmsg out of its epoll set.
#            (Their "ctr run -d" times go to the samples file only: the two
#            runtimes are not interleaved there, so host load drifts between them.)
#   high     per runtime in turn: H containers each holding ~95 % of a 64 MiB
#            limit in tmpfs (memory it cannot reclaim), 3 s to settle (oomguard
#            warned each once, /oomguard/memory-pressure), then the same CPU
#            and context-switch figures over T seconds as for idle.
#   oom      OOM kill -> TaskOOM (oomguard-bench latency): O rounds, the two
#            runtimes interleaved (ABBA); a container with a 32 MiB limit sleeps
#            1 s, then allocates 100 MB. t0 = an eventfd of the measuring
#            process on the container's memory.oom_control firing (the memcg
#            entered OOM); t1 = the /tasks/oom line reaching a `ctr events`
#            subscriber; p50/p99 (nearest rank). The measuring process also
#            reads the container's oom_kill counter every ~0.1 ms after t0: when
#            it moves is the earliest a confirmed kill can be known (the stock
#            shim publishes at t0, before the kill). Then the same for gVisor
#            (runsc 20240729, systrap, 64 MiB, 200 MB): stock = the runc-v2 shim
#            with runsc as its BinaryName, oomguard with binary_name = runsc.
#            From oomguard's log: its own notification -> publish time and the
#            Forward call's time for each TaskOOM.
#   storm    S containers (32 MiB limit) wait on one barrier, are released at
#            once and allocate 100 MB (oomguard-bench storm), per runtime: how
#            many got exactly one TaskOOM before their TaskExit, how many exited
#            137, and the time from the release to the last TaskExit; shims'
#            total CPU over the storm.
#   v2       the OOM kill -> TaskOOM rounds on cgroup v2, in the qemu lane
#            (hack/v2/run.sh --bench O: Debian's 6.1 kernel under TCG, so the
#            absolute figures are the emulator's; t0 = inotify on
#            memory.events showing "oom" moved).
#   size     both shim binaries.
#   gvisor   (when hack/deps.sh runsc installed runsc 20240729) a gVisor pod
#            through ctr: a sandbox and G joined containers (sleep, cgroupfs
#            mounted as CRI does), oomguard only (the stock shim cannot run a
#            joined gVisor container, DESIGN.md §4):
#            - idle: the pod's shims' and sandbox's CPU over T s, with each
#              container limited to 64 MiB (own-limit watch on) and without
#              limits (watch off);
#            - sample: one sample of a container's own usage as the shim
#              takes it (runtimes/examples/gvisor_usage: control socket), its
#              wall time, client CPU and sandbox CPU, beside
#              "runsc read-control" of the same file;
#            - runaway: R runs each of a 64 MiB container reading 300 MB in
#              one read() ("dd") and one growing ~35 MB/s ("sort"): exit
#              code, usage over the limit when the shim read it, the time
#              from the wake of that round to the kill sent and from the
#              kill to the exit, and the sandbox memcg's peak growth
#              (memory.max_usage_in_bytes, v1);
#            - burst (phase "burst"): oomguard-bench burst, the matrix of
#              issue 20: containers allocating 68..300 MiB at once against
#              their own 64 MiB limit, ptrace and systrap, with and without a
#              100 MB neighbour, beside the same pods run by runsc alone;
#            - gvisor-cri (phase "gvisor-cri"): RunPodSandbox to a running
#              container in a networked pod through CRI, oomguard-runsc on
#              systrap and ptrace beside stock gVisor (medians of
#              BENCH_BURST_RUNS rounds), and the serving shim's PSS.
# Shims are the processes whose argv[0] is containerd-shim-{runc,oomguard}-v2
# and which have "-address DIR/containerd.sock". ctr sets no pod annotation, so
# both runtimes run one shim per container.
#
# Prints a markdown table and writes it to .cache/bench/results-VER.md (raw
# samples: .cache/bench/samples-VER.tsv, OOM latency runs:
# oom-latency-VER.tsv, storm: storm-VER.tsv). About 12 minutes per VER on 2
# cores with the defaults (the storm and the qemu lane take most), plus the
# build.
#
# Environment:
#   OOMGUARD_SHIM_DIR    directory holding containerd-shim-oomguard-v2; when set,
#                        nothing is built. Default: "cargo build --release -p
#                        oomguard-shim", then ${CARGO_TARGET_DIR:-target}/release.
#   BENCH_CONTAINERS     N, idle containers per runtime (default 20)
#   BENCH_RUNS           M, latency rounds per runtime (default 30)
#   BENCH_IDLE_SECONDS   T, idle window (default 10)
#   BENCH_GVISOR_CONTAINERS  G, joined containers in the gVisor pod (default 4)
#   BENCH_RUNAWAY_RUNS   R, runs per runaway kind (default 3)
#   BENCH_OOM_RUNS       O, OOM latency rounds per runtime (default 20; 0 skips)
#   BENCH_FLOOD_RATE     F, kernel log lines/s in the flood window (default 2000; 0 skips)
#   BENCH_STORM          S, containers in the OOM storm (default 200; 0 skips)
#   BENCH_GVISOR         1 (default): the gVisor rows when runsc 20240729 is there
#   BENCH_V2             1 (default): the cgroup v2 rows from the qemu lane (adds ~5 min)
#   BENCH_BURST_RUNS     runs per burst size and pod shape (default 10)
#   BENCH_BURST_SIZES    MiB the bursting containers allocate (default 68,72,80,96,120,300)
#   BENCH_HIGH_CONTAINERS H, containers at 95 % of their limit (default 30)
#   BENCH_PHASES         which phases run (default: all): a comma-separated
#                        subset of latency,idle,high,oom,storm,v2,gvisor,burst,
#                        gvisor-cri (burst and gvisor-cri run within gvisor)
#   OOMGUARD_BENCH_BIN   the oomguard-bench binary (default: built with the shim)
set -euo pipefail
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VERS=()
for arg in "$@"; do
	case $arg in
	-h | --help) usage 0 ;;
	1.6 | 1.7 | 2) VERS+=("$arg") ;;
	*)
		echo "bench.sh: unknown argument '$arg' (expected 1.6, 1.7 or 2)" >&2
		usage 2 >&2
		;;
	esac
done
((${#VERS[@]})) || VERS=(1.7)

N=${BENCH_CONTAINERS:-20}
M=${BENCH_RUNS:-30}
T=${BENCH_IDLE_SECONDS:-10}
G=${BENCH_GVISOR_CONTAINERS:-4}
R=${BENCH_RUNAWAY_RUNS:-3}
O=${BENCH_OOM_RUNS:-20}
F=${BENCH_FLOOD_RATE:-2000}
S=${BENCH_STORM:-200}
H=${BENCH_HIGH_CONTAINERS:-30}
PHASES=,${BENCH_PHASES:-latency,idle,high,oom,storm,v2,gvisor,burst,gvisor-cri},
BURST_RUNS=${BENCH_BURST_RUNS:-10}
BURST_SIZES=${BENCH_BURST_SIZES:-68,72,80,96,120,300}
WARMUP=3
for v in N M T G R BURST_RUNS; do
	[[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
for v in O F S; do
	[[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a number (got '${!v}')"
done
phase() { [[ $PHASES == *",$1,"* ]]; }

need_root
(( BASH_VERSINFO[0] >= 5 )) || die "needs bash 5 (EPOCHREALTIME)"

KINDS=(stock oomguard)
declare -A RUNTIME=([stock]=io.containerd.runc.v2 [oomguard]=io.containerd.oomguard.v2)
declare -A SHIM_BIN=([stock]=containerd-shim-runc-v2 [oomguard]=containerd-shim-oomguard-v2)
CLK_TCK=$(getconf CLK_TCK)

DIR=""      # the private containerd's directory (current VER)
WORK=""     # scratch files (current VER)
NS="oomguard-bench-$$"
PREFIX="bench$$"
FLOOR_ROOT="" # runc --root of the "runc run" floor
KMSG_PID=""   # dmesg --follow-new during an idle window
DEVKMSG_OLD="" # kernel.printk_devkmsg before the flood, restored after it
FLOOD_PID=""   # oomguard-bench kmsg-flood

# ---------------------------------------------------------------- clean-up

# FIFOs that "ctr run -d" leaves in /run/containerd/fifo/N/ (named ID-stdin,
# ID-stdout, ID-stderr); ctr removes them only when it waits for the task.
rm_fifo_files() { # FILE...
	local f
	for f; do
		[[ -e $f ]] || continue
		rm -f -- "$f"
		rmdir -- "${f%/*}" 2>/dev/null || true
	done
}

rm_fifos() { # ID
	rm_fifo_files /run/containerd/fifo/*/"$1"-std{in,out,err}
}

# Puts kernel.printk_devkmsg back as it was before the flood.
restore_devkmsg() {
	if [[ -n $FLOOD_PID ]]; then
		kill "$FLOOD_PID" 2>/dev/null || true
		wait "$FLOOD_PID" 2>/dev/null || true
		FLOOD_PID=""
	fi
	[[ -n $DEVKMSG_OLD ]] || return 0
	printf '%s\n' "$DEVKMSG_OLD" >/proc/sys/kernel/printk_devkmsg ||
		warn "could not restore kernel.printk_devkmsg to '$DEVKMSG_OLD'"
	DEVKMSG_OLD=""
}

cleanup_ver() {
	local id
	restore_devkmsg
	if [[ -n $KMSG_PID ]]; then
		kill "$KMSG_PID" 2>/dev/null || true
		wait "$KMSG_PID" 2>/dev/null || true
		KMSG_PID=""
	fi
	if [[ -n $FLOOR_ROOT && -d $FLOOR_ROOT ]]; then
		while read -r id; do
			[[ -n $id ]] && runc --root "$FLOOR_ROOT" delete -f "$id" >/dev/null 2>&1
		done < <(runc --root "$FLOOR_ROOT" list -q 2>/dev/null || true)
	fi
	FLOOR_ROOT=""
	if [[ -n $DIR ]]; then
		"$REPO/hack/containerd.sh" stop "$DIR" || warn "hack/containerd.sh stop $DIR failed"
	fi
	DIR=""
	rm_fifo_files /run/containerd/fifo/*/"$PREFIX"-*-std{in,out,err}
	local cg
	for cg in /sys/fs/cgroup/*/"$NS"; do
		[[ -d $cg ]] || continue
		rmdir "$cg/floor" 2>/dev/null || true
		rmdir "$cg" 2>/dev/null || true
	done
	shims_cgroup_remove stock
	shims_cgroup_remove oomguard
	[[ -z $WORK ]] || rm -rf -- "$WORK"
	WORK=""
	return 0
}

trap cleanup_ver EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- helpers

now_us() { printf '%s\n' "${EPOCHREALTIME//[.,]/}"; }

# run_timed FILE CMD...: run CMD, append its wall time in µs to FILE; on
# failure show CMD's output and die.
run_timed() {
	local file=$1 t0 t1
	shift
	t0=${EPOCHREALTIME//[.,]/}
	if ! "$@" </dev/null >"$WORK/out" 2>&1; then
		sed 's/^/    /' "$WORK/out" >&2
		die "failed: $*"
	fi
	t1=${EPOCHREALTIME//[.,]/}
	printf '%s\n' "$((t1 - t0))" >>"$file"
}

# stats FILE: µs samples -> "mean median p90 min max" in ms
stats() {
	sort -n "$1" | awk '
		{ v[NR] = $1; s += $1 }
		END {
			if (NR == 0) { print "nan nan nan nan nan"; exit }
			med = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
			k = int(0.9 * NR); if (k < 0.9 * NR) k++   # nearest rank
			printf "%.2f %.2f %.2f %.2f %.2f\n", s / NR / 1000, med / 1000, v[k] / 1000, v[1] / 1000, v[NR] / 1000
		}'
}

# pids of KIND's shims serving this containerd (not the short-lived
# "start"/"delete" invocations).
shim_pids() {
	local kind=$1 sock="$DIR/containerd.sock" p i
	local -a args
	for p in /proc/[0-9]*; do
		mapfile -d '' -t args 2>/dev/null <"$p/cmdline" || continue
		((${#args[@]} > 1)) || continue
		[[ ${args[0]##*/} == "${SHIM_BIN[$kind]}" ]] || continue
		[[ ${args[-1]} != start && ${args[-1]} != delete ]] || continue
		for ((i = 1; i < ${#args[@]}; i++)); do
			if [[ ${args[i - 1]} == -address || ${args[i - 1]} == --address ]] &&
				[[ ${args[i]} == "$sock" || ${args[i]} == "unix://$sock" ]]; then
				printf '%s\n' "${p#/proc/}"
				break
			fi
		done
	done
}

# process_ticks PID: utime+stime of /proc/PID/stat (ended threads included).
process_ticks() {
	local st
	local -a fl
	st=$(<"/proc/$1/stat") || die "shim $1 is gone"
	st=${st##*) }
	read -r -a fl <<<"$st"
	printf '%s\n' $((fl[11] + fl[12]))
}

# thread_switches /proc/PID/task/TID: its voluntary + involuntary context
# switches (fails when the thread is gone).
thread_switches() {
	local key n cs=0
	while read -r key n _; do
		case $key in
		voluntary_ctxt_switches: | nonvoluntary_ctxt_switches:) cs=$((cs + n)) ;;
		esac
	done 2>/dev/null <"$1/status" || return 1
	printf '%s\n' "$cs"
}

# cpu_snapshot PID...: "ticks sched_ns ctxt_switches threads" summed over the
# processes (ticks: utime+stime of /proc/PID/stat, which includes exited
# threads; sched_ns and switches: over the live threads).
cpu_snapshot() {
	local p t ticks=0 ns=0 cs=0 threads=0 f
	for p in "$@"; do
		ticks=$((ticks + $(process_ticks "$p")))
		for t in /proc/"$p"/task/*; do
			read -r f _ 2>/dev/null <"$t/schedstat" || continue
			ns=$((ns + f))
			threads=$((threads + 1))
			cs=$((cs + $(thread_switches "$t")))
		done
	done
	printf '%s %s %s %s\n' "$ticks" "$ns" "$cs" "$threads"
}

# shims_cgroup KIND PID...: moves the shims into a cpuacct cgroup of their own
# and prints its path. Their CPU is read there, whole: schedstat sums only
# live threads, and a thread that ends in the window (tokio lets an idle
# blocking-pool thread go 10 s after its last runtime command) would take its
# time with it. The shims' later children (runc delete) join it too.
shims_cgroup() {
	local cg=/sys/fs/cgroup/cpuacct/$PREFIX-shims-$1 p
	shift
	mkdir -p "$cg" || die "cannot create $cg"
	for p in "$@"; do
		printf '%s\n' "$p" >"$cg/cgroup.procs" || die "cannot move shim $p into $cg"
	done
	printf '%s\n' "$cg"
}

# shims_cgroup_remove KIND: the group goes once its shims have (or, when
# they are still there, they go back to the root group first).
shims_cgroup_remove() {
	local cg=/sys/fs/cgroup/cpuacct/$PREFIX-shims-$1 p
	[[ -d $cg ]] || return 0
	while read -r p; do
		printf '%s\n' "$p" >/sys/fs/cgroup/cpuacct/cgroup.procs 2>/dev/null || true
	done <"$cg/cgroup.procs"
	rmdir "$cg" 2>/dev/null || warn "could not remove $cg"
}

# shims_cpu CG OUT PID...: "ticks ns" of the shims (ticks: utime+stime of
# /proc/PID/stat; ns: CG's cpuacct.usage, both counting ended threads), and
# each live thread's "tid switches" written to OUT for switches_between.
shims_cpu() {
	local cg=$1 out=$2 p t ticks=0 cs
	shift 2
	: >"$out"
	for p in "$@"; do
		ticks=$((ticks + $(process_ticks "$p")))
		for t in /proc/"$p"/task/*; do
			cs=$(thread_switches "$t") || continue
			printf '%s %s\n' "${t##*/}" "$cs" >>"$out"
		done
	done
	printf '%s %s\n' "$ticks" "$(<"$cg/cpuacct.usage")"
}

# switches_between OUT0 OUT1: "switches ended": the context switches between
# two shims_cpu snapshots of the threads alive at the second (a thread born
# in between counts from 0), and how many threads ended in between (their
# last switches are not seen: a lower bound then).
switches_between() {
	awk 'NR == FNR { before[$1] = $2; next }
		{ sum += $2 - ($1 in before ? before[$1] : 0); seen[$1] = 1 }
		END { for (t in before) if (!(t in seen)) ended++; printf "%d %d\n", sum, ended }' "$1" "$2"
}

ctr_() { "$CTR_BIN" --address "$DIR/containerd.sock" --namespace "$NS" "$@"; }

ctr_delete() { # ID: what is timed as kill+delete
	ctr_ tasks delete -f "$1" && ctr_ containers delete "$1"
}

remove_container() { # ID
	ctr_ tasks delete -f "$1" >/dev/null 2>&1 || true
	ctr_ containers delete "$1" >/dev/null 2>&1 || warn "could not delete container $1"
	rm_fifos "$1"
}

# ---------------------------------------------------------------- phases

# Interleaved latency rounds; samples go to $WORK/lat-{rm,d,del}.KIND.
phase_latency() {
	local i k id j out
	local -a order
	note "latency: $WARMUP warm-up + $M rounds per runtime, interleaved"
	for ((i = -WARMUP; i < M; i++)); do
		# ABBA: alternate which runtime goes first
		if (((i + WARMUP) % 2)); then order=(oomguard stock); else order=(stock oomguard); fi
		for k in "${order[@]}"; do
			if ((i < 0)); then j="w$((-i))" out="$WORK/warm"; else j=$i out="$WORK/lat"; fi
			id="$PREFIX-$k-rm$j"
			run_timed "$out-rm.$k" ctr_ run --rm --runtime "${RUNTIME[$k]}" --rootfs "$ROOTFS" "$id" /bin/true
			id="$PREFIX-$k-d$j"
			run_timed "$out-d.$k" ctr_ run -d --runtime "${RUNTIME[$k]}" --rootfs "$ROOTFS" "$id" /bin/sleep 1000
			run_timed "$out-del.$k" ctr_delete "$id"
			rm_fifos "$id"
		done
	done
}

# Reference floors: ctr version, and runc run /bin/true without containerd.
phase_floors() {
	local i b="$WORK/floor-bundle"
	note "floors: ctr version, runc run"
	for ((i = 0; i < M; i++)); do
		run_timed "$WORK/floor-ctr" ctr_ version
	done
	FLOOR_ROOT="$DIR/floor-runc"
	mkdir -p "$b" "$FLOOR_ROOT"
	if ! (cd "$b" && runc spec) >/dev/null 2>&1; then
		warn "runc spec failed: no runc floor"
		return 0
	fi
	jq --arg r "$ROOTFS" --arg cg "/$NS/floor" \
		'.process.terminal = false | .process.args = ["/bin/true"] | .root = {path: $r, readonly: false} | .linux.cgroupsPath = $cg' \
		"$b/config.json" >"$b/config.json.new" && mv "$b/config.json.new" "$b/config.json"
	for ((i = -WARMUP; i < M; i++)); do
		if ((i < 0)); then
			runc --root "$FLOOR_ROOT" run --bundle "$b" "$PREFIX-floor-w$((-i))" </dev/null >/dev/null 2>&1 ||
				{ warn "runc run failed: no runc floor"; rm -f "$WORK/floor-runc"; return 0; }
		else
			run_timed "$WORK/floor-runc" runc --root "$FLOOR_ROOT" run --bundle "$b" "$PREFIX-floor-$i"
		fi
	done
}

# N idle containers of KIND: CPU over T s, then memory and threads.
# Results: $WORK/idle.KIND ("key value" lines).
phase_idle() {
	local k=$1 i id
	local -a pids
	note "idle: $N containers under ${RUNTIME[$k]}, ${T}s"
	for ((i = 0; i < N; i++)); do
		id="$PREFIX-$k-idle$i"
		run_timed "$WORK/idle-start.$k" ctr_ run -d --runtime "${RUNTIME[$k]}" --rootfs "$ROOTFS" "$id" /bin/sleep 1000
	done
		# (2 s: an oomguard shim's blocking-pool thread ends 1 s after its last
	# runtime command; the window is the steady state after that.)
	sleep 2
	mapfile -t pids < <(shim_pids "$k")
	((${#pids[@]} == N)) || warn "$k: found ${#pids[@]} shim processes for $N containers"
	((${#pids[@]})) || die "$k: no shim processes found"

	# Host kernel log lines in the window (oomguard reads /dev/kmsg only
	# while an OOM, host memory pressure or an exit makes it matter): counted.
	local c0 c1 c2="" c3="" cg s ended
	cg=$(shims_cgroup "$k" "${pids[@]}")
	dmesg --follow-new --raw >"$WORK/kmsg.$k" 2>/dev/null &
	KMSG_PID=$!
	c0=$(shims_cpu "$cg" "$WORK/thr0.$k" "${pids[@]}")
	sleep "$T" &
	wait $! # (a signal's trap runs at once, not after the sleep)
	c1=$(shims_cpu "$cg" "$WORK/thr1.$k" "${pids[@]}")
	kill "$KMSG_PID" 2>/dev/null || true
	wait "$KMSG_PID" 2>/dev/null || true
	KMSG_PID=""

	if ((F > 0)); then
		note "idle: the same shims, ${T}s, while $F lines/s go to /dev/kmsg"
		DEVKMSG_OLD=$(</proc/sys/kernel/printk_devkmsg)
		echo on >/proc/sys/kernel/printk_devkmsg || die "cannot set kernel.printk_devkmsg"
		dmesg --follow-new --raw >"$WORK/kmsg-flood.$k" 2>/dev/null &
		KMSG_PID=$!
		c2=$(shims_cpu "$cg" "$WORK/thr2.$k" "${pids[@]}")
		"$BENCH_BIN" kmsg-flood --rate "$F" --seconds "$T" >"$WORK/flood.$k" 2>&1 &
		FLOOD_PID=$!
		wait "$FLOOD_PID" || die "kmsg-flood failed: $(cat "$WORK/flood.$k")"
		FLOOD_PID=""
		c3=$(shims_cpu "$cg" "$WORK/thr3.$k" "${pids[@]}")
		restore_devkmsg
		sleep 0.2
		kill "$KMSG_PID" 2>/dev/null || true
		wait "$KMSG_PID" 2>/dev/null || true
		KMSG_PID=""
	fi

	local p files=() tmax=0 tsum=0 th
	for p in "${pids[@]}"; do
		cat "/proc/$p/smaps_rollup" >"$WORK/smaps.$k.$p" || die "shim $p is gone"
		files+=("$WORK/smaps.$k.$p")
		th=$(awk '/^Threads:/ { print $2 }' "/proc/$p/status")
		tsum=$((tsum + th))
		((th > tmax)) && tmax=$th
	done
	{
		printf 'shims %s\n' "${#pids[@]}"
		awk -v n="${#pids[@]}" '
			/^Pss:/ { pss += $2 } /^Rss:/ { rss += $2 } /^Pss_Anon:/ { anon += $2 }
			/^Private_(Clean|Dirty):/ { uss += $2 }
			END { printf "pss %.0f\nrss %.0f\nuss %.0f\nanon %.0f\n", pss / n, rss / n, uss / n, anon / n }' "${files[@]}"
		printf 'kmsg_lines %s\n' "$(grep -c '' "$WORK/kmsg.$k" || true)"
		printf 'threads %s\nthreads_max %s\n' "$(awk -v s="$tsum" -v n="${#pids[@]}" 'BEGIN { printf "%.1f", s / n }')" "$tmax"
		read -r t0 n0 <<<"$c0"
		read -r t1 n1 <<<"$c1"
		read -r s ended <<<"$(switches_between "$WORK/thr0.$k" "$WORK/thr1.$k")"
		awk -v dt=$((t1 - t0)) -v dn=$((n1 - n0)) -v ds="$s" -v ended="$ended" -v hz="$CLK_TCK" -v T="$T" 'BEGIN {
			printf "cpu_ticks %d\ncpu_ms_stat %.2f\ncpu_ms_sched %.3f\ncswitch_per_s %.2f\nthreads_ended %d\n", dt, dt * 1000 / hz, dn / 1e6, ds / T, ended
		}'
		if [[ -n $c2 ]]; then
			read -r t2 n2 <<<"$c2"
			read -r t3 n3 <<<"$c3"
			read -r s ended <<<"$(switches_between "$WORK/thr2.$k" "$WORK/thr3.$k")"
			awk -v dt=$((t3 - t2)) -v dn=$((n3 - n2)) -v ds="$s" -v ended="$ended" -v T="$T" 'BEGIN {
				printf "flood_ticks %d\nflood_ms_sched %.3f\nflood_cswitch_per_s %.2f\nflood_threads_ended %d\n", dt, dn / 1e6, ds / T, ended
			}'
			printf 'flood_kmsg_lines %s\n' "$(grep -c '' "$WORK/kmsg-flood.$k" || true)"
			printf 'flood_written %s\n' "$(awk '{ print $2 }' "$WORK/flood.$k")"
		fi
	} >"$WORK/idle.$k"

	note "removing the $N containers"
	for ((i = 0; i < N; i++)); do
		remove_container "$PREFIX-$k-idle$i"
	done
	shims_cgroup_remove "$k"
}

# H containers of KIND, each holding ~95 % of its 64 MiB limit in tmpfs
# (memory it cannot reclaim): the shims' CPU over T s after they settled
# (oomguard warned each once). Results: $WORK/high.KIND.
phase_high() {
	local k=$1 i id
	local -a pids
	note "high: $H containers under ${RUNTIME[$k]} at 95% of 64 MiB, ${T}s"
	for ((i = 0; i < H; i++)); do
		id="$PREFIX-$k-high$i"
		ctr_ run -d --runtime "${RUNTIME[$k]}" --memory-limit "$MIB64" --rootfs "$ROOTFS" "$id" \
			/bin/sh -c 'dd if=/dev/zero of=/dev/shm/hold bs=1M count=61 2>/dev/null; exec sleep 1000' >/dev/null ||
			die "ctr run $id failed"
	done
	sleep 3
	mapfile -t pids < <(shim_pids "$k")
	((${#pids[@]} == H)) || warn "$k: found ${#pids[@]} shim processes for $H containers"
	((${#pids[@]})) || die "$k: no shim processes found"
	local c0 c1 cg usage s ended
	cg=$(shims_cgroup "$k" "${pids[@]}")
	usage=$(cat "/sys/fs/cgroup/memory/$NS/$PREFIX-$k-high0/memory.usage_in_bytes" 2>/dev/null || echo "")
	c0=$(shims_cpu "$cg" "$WORK/thr0.$k" "${pids[@]}")
	sleep "$T" &
	wait $!
	c1=$(shims_cpu "$cg" "$WORK/thr1.$k" "${pids[@]}")
	{
		printf 'shims %s
usage0 %s
' "${#pids[@]}" "$usage"
		read -r t0 n0 <<<"$c0"
		read -r t1 n1 <<<"$c1"
		read -r s ended <<<"$(switches_between "$WORK/thr0.$k" "$WORK/thr1.$k")"
		awk -v dt=$((t1 - t0)) -v dn=$((n1 - n0)) -v ds="$s" -v ended="$ended" -v hz="$CLK_TCK" -v T="$T" 'BEGIN {
			printf "cpu_ms_stat %.2f\ncpu_ms_sched %.3f\ncswitch_per_s %.2f\nthreads_ended %d\n", dt * 1000 / hz, dn / 1e6, ds / T, ended
		}'
		# oomguard's warnings in its log (containerd's): one per container.
		printf 'warned %s\n' "$(grep -c "warning id=$PREFIX-$k-high[0-9]*: .*=> warned" "$DIR/containerd.log" || true)"
	} >"$WORK/high.$k"
	for ((i = 0; i < H; i++)); do
		remove_container "$PREFIX-$k-high$i"
	done
	shims_cgroup_remove "$k"
}

# OOM kill -> TaskOOM, runc then gVisor; lines go to $WORK/oomlat.tsv, and
# oomguard's own timings of each TaskOOM to $WORK/oomlat-shim.tsv.
phase_oom_latency() {
	((O > 0)) || return 0
	local common=(--ctr "$CTR_BIN" --address "$DIR/containerd.sock" --namespace "$NS"
		--rootfs "$ROOTFS" --work "$WORK" --cgroup-parent "/$NS")
	note "oom latency: $O rounds per runtime, interleaved (runc)"
	"$BENCH_BIN" latency "${common[@]}" --runs "$O" \
		--kind "stock,${RUNTIME[stock]}" --kind "oomguard,${RUNTIME[oomguard]}" \
		>>"$WORK/oomlat.tsv" 2>>"$WORK/oomlat.err" || die "oomguard-bench latency failed: $(tail -5 "$WORK/oomlat.err")"
	if [[ ${BENCH_GVISOR:-1} == 1 && -x $RUNSC_NEW ]]; then
		note "oom latency: $O rounds per runtime, interleaved (gVisor)"
		gvisor_lane_configs
		"$BENCH_BIN" latency "${common[@]}" --runs "$O" --own-rootfs 1 --limit 67108864 --alloc-mb 200 \
			--kind "stock-gvisor,${RUNTIME[stock]},--runc-binary,$WORK/runsc-lane" \
			--kind "oomguard-gvisor,${RUNTIME[oomguard]},--runtime-config-path,$WORK/oomguard/runsc.toml" \
			>>"$WORK/oomlat.tsv" 2>>"$WORK/oomlat.err" || die "oomguard-bench latency (gVisor) failed: $(tail -5 "$WORK/oomlat.err")"
	fi
	shim_oom_timings "$DIR/containerd.log" >"$WORK/oomlat-shim.tsv"
}

# "ID notification->publish_ms forward_ms" per TaskOOM of the latency
# containers, from oomguard's log lines in containerd's log (the shim logs
# at debug level under this containerd; its lines carry no container id).
# One container OOMs at a time, so a TaskOOM's Forward is the first after
# its publish line.
shim_oom_timings() { # LOG
	awk '
		/publishing TaskOOM/ && match($0, /oom id=lat[^ ]*/) {
			id = substr($0, RSTART + 7, RLENGTH - 7)
			ms = "-"
			if (match($0, /ms_after_notification=[0-9.]+/)) ms = substr($0, RSTART + 22, RLENGTH - 22)
			next
		}
		id != "" && /topic=\/tasks\/oom/ && match($0, /forward_ms=[0-9.]+/) {
			print id "\t" ms "\t" substr($0, RSTART + 11, RLENGTH - 11)
			id = ""
		}' "$1"
}

# S containers OOMing at once behind a barrier; lines go to $WORK/storm.tsv.
phase_storm() {
	((S > 0)) || return 0
	note "storm: $S containers behind a barrier, per runtime"
	"$BENCH_BIN" storm --ctr "$CTR_BIN" --address "$DIR/containerd.sock" --namespace "$NS" \
		--rootfs "$ROOTFS" --work "$WORK" --cgroup-parent "/$NS" --count "$S" --parallel 4 \
		--kind "stock,${RUNTIME[stock]}" --kind "oomguard,${RUNTIME[oomguard]}" \
		>"$WORK/storm.tsv" 2>"$WORK/storm.err" || die "oomguard-bench storm failed: $(tail -5 "$WORK/storm.err")"
}

# The OOM latency rounds on cgroup v2, in the qemu lane; lines go to
# $WORK/oomlat.tsv (kinds v2-stock, v2-oomguard) and $WORK/oomlat-shim.tsv.
phase_v2() {
	((O > 0)) && [[ ${BENCH_V2:-1} == 1 ]] || return 0
	case $1 in 1.7 | 2) ;; *) return 0 ;; esac
	note "cgroup v2: $O rounds per runtime in the qemu lane (containerd $1)"
	if ! "$REPO/hack/v2/run.sh" --containerd "$1" --bench "$O" --shim "$OG_BIN" --bench-tool "$BENCH_BIN" \
		"$WORK/v2" >"$WORK/v2.out" 2>&1; then
		warn "the qemu lane's bench failed (no cgroup v2 rows): $(tail -3 "$WORK/v2.out")"
		return 0
	fi
	sed -n 's/^OOMGUARD-BENCH latency\t\([a-z]*\)/latency\tv2-\1/p' "$WORK/v2/console.log" >>"$WORK/oomlat.tsv"
	sed -n 's/^OOMGUARD-SHIM-LOG //p' "$WORK/v2/console.log" >"$WORK/v2-shim.log"
	shim_oom_timings "$WORK/v2-shim.log" | sed 's/^/v2-/' >>"$WORK/oomlat-shim.tsv"
}

# ---------------------------------------------------------------- gVisor pod

# The gVisor figures run what `install` writes on this machine: oomguard's
# runsc.toml from the shim's own install (gVisor's default platform,
# systrap; network "host" where this kernel needs it) in $WORK/oomguard/,
# and for the stock shim $WORK/runsc-lane, runsc with the same flags.
gvisor_lane_configs() {
	[[ -e $WORK/runsc-lane ]] && return 0
	lane_oomguard_configs "$SHIM_DIR/containerd-shim-oomguard-v2" "$WORK/oomguard"
	GVISOR_FLAGS=$(sed -n 's/^ *\([a-z_-]*\) = "\(.*\)"$/--\1=\2/p' "$WORK/oomguard/runsc.toml" |
		grep -v -e '^--binary_name=' -e '^--root=' | tr '\n' ' ')
	printf '#!/bin/sh\nexec %s %s"$@"\n' "$RUNSC_NEW" "$GVISOR_FLAGS" >"$WORK/runsc-lane"
	chmod +x "$WORK/runsc-lane"
}

RUNSC_NEW="$CACHE/runsc/20240729/bin/runsc"
CGROUP_MOUNT="type=cgroup,src=cgroup,dst=/sys/fs/cgroup,options=ro:nosuid:noexec:nodev"
MIB64=67108864
USAGE_BIN=""
GV_IDS=() # the gVisor containers made (removed by gv_clean)

# gv_run ID OPTS... -- CMD...: ctr run of a gVisor container with its own
# rootfs copy (gVisor keeps a filestore file in it).
gv_run() {
	local id=$1
	local -a opts=()
	shift
	while (($#)) && [[ $1 != -- ]]; do
		opts+=("$1")
		shift
	done
	shift
	cp -a "$ROOTFS" "$WORK/rootfs-$id"
	GV_IDS+=("$id")
	ctr_ run --runtime io.containerd.oomguard.v2 --runtime-config-path "$WORK/runsc.toml" \
		"${opts[@]}" --rootfs "$WORK/rootfs-$id" "$id" "$@"
}

gv_pod() { # POD
	gv_run "$1" -d --annotation io.kubernetes.cri.container-type=sandbox \
		--annotation "io.kubernetes.cri.sandbox-id=$1" -- /bin/sleep 1000 >/dev/null ||
		die "gVisor sandbox $1 did not start"
}

gv_join() { # POD ID OPTS... -- CMD...
	local pod=$1 id=$2
	shift 2
	gv_run "$id" --annotation io.kubernetes.cri.container-type=container \
		--annotation "io.kubernetes.cri.sandbox-id=$pod" --mount "$CGROUP_MOUNT" "$@"
}

gv_clean() {
	local i id
	for ((i = ${#GV_IDS[@]} - 1; i >= 0; i--)); do
		id=${GV_IDS[i]}
		# A --rm container is gone already.
		ctr_ containers info "$id" >/dev/null 2>&1 && remove_container "$id"
		rm -rf -- "$WORK/rootfs-$id"
	done
	GV_IDS=()
}

# Seconds since midnight of a containerd log line (time="...T12:34:56.789Z").
# Prints nothing for a line without that stamp.
log_time() {
	sed -nE 's/^time="[^T]*T([0-9]+):([0-9]+):([0-9.]+)Z".*/\1 \2 \3/p' |
		awk 'NF == 3 { printf "%.6f\n", $1 * 3600 + $2 * 60 + $3 }'
}

# An idle pod of G containers, KIND "limits" (64 MiB each) or "nolimits".
# Results: $WORK/gv-idle.KIND ("key value" lines).
phase_gvisor_idle() {
	local kind=$1 pod="$PREFIX-gv$1" i cg a b an bn at bt s0 s1
	local -a opts=() pids
	[[ $kind == limits ]] && opts=(--memory-limit "$MIB64")
	note "gvisor idle: a pod of $G containers ($kind), ${T}s"
	gv_pod "$pod"
	for ((i = 0; i < G; i++)); do
		gv_join "$pod" "$pod-c$i" -d "${opts[@]}" -- /bin/sleep 1000 >/dev/null ||
			die "gVisor container $pod-c$i did not start"
	done
	sleep 2
	mapfile -t pids < <(shim_pids oomguard)
	cg=/sys/fs/cgroup/cpuacct/$NS/$pod/cpuacct.usage
	[[ -r $cg ]] || die "no cpuacct for the sandbox: $cg"
	read -r a an _ at <<<"$(cpu_snapshot "${pids[@]}")"
	s0=$(<"$cg")
	sleep "$T" &
	wait $!
	read -r b bn _ bt <<<"$(cpu_snapshot "${pids[@]}")"
	s1=$(<"$cg")
	# schedstat sums live threads only: a thread that ended in the window
	# (tokio's blocking pool lets an idle one go after 10 s) takes its
	# time with it, so that figure is void then (utime+stime is not).
	awk -v dt=$((b - a)) -v dn=$((bn - an)) -v ds=$((s1 - s0)) -v hz="$CLK_TCK" -v n="${#pids[@]}" \
		-v gone=$((at - bt)) 'BEGIN {
		sched = gone > 0 ? sprintf("n/a(%d_threads_ended)", gone) : sprintf("%.3f", dn / 1e6)
		printf "shims %d\nshim_cpu_ms %.1f\nshim_sched_ms %s\nsandbox_cpu_ms %.1f\n", n, dt * 1000 / hz, sched, ds / 1e6 }' >"$WORK/gv-idle.$kind"
	gv_clean
}

# The cost of one sample. Results: $WORK/gv-sample.
phase_gvisor_sample() {
	local pod="$PREFIX-gvs" id="$PREFIX-gvs-a" sock cg s0 s1 w0 w1 i
	local -a fields ticks
	note "gvisor: the cost of one usage sample"
	gv_pod "$pod"
	gv_join "$pod" "$id" -d --memory-limit "$MIB64" -- /bin/sleep 1000 >/dev/null ||
		die "gVisor container $id did not start"
	sleep 1
	sock=$(jq -r '.sandbox.controlSocketPath' "$DIR/runsc-root/${id}_sandbox:$pod.state")
	cg=/sys/fs/cgroup/cpuacct/$NS/$pod/cpuacct.usage
	s0=$(<"$cg")
	read -r -a fields <<<"$("$USAGE_BIN" "$sock" "$id" 200)" || die "gvisor_usage failed"
	s1=$(<"$cg")
	{
		printf 'urpc_wall_us %s\nurpc_cpu_us %s\n' "${fields[3]}" "${fields[5]}"
		awk -v d=$((s1 - s0)) 'BEGIN { printf "urpc_sandbox_us %.1f\n", d / 201 / 1000 }'
		s0=$(<"$cg")
		w0=${EPOCHREALTIME//[.,]/}
		read -r -a ticks < <(
			for ((i = 0; i < 20; i++)); do
				"$RUNSC_NEW" --root "$DIR/runsc-root" read-control "$id" memory "/$id" memory.usage_in_bytes >/dev/null
			done
			cut -d' ' -f16,17 "/proc/$BASHPID/stat"
		)
		w1=${EPOCHREALTIME//[.,]/}
		s1=$(<"$cg")
		awk -v w=$((w1 - w0)) -v c=$((ticks[0] + ticks[1])) -v hz="$CLK_TCK" -v d=$((s1 - s0)) 'BEGIN {
			printf "cli_wall_us %.0f\ncli_cpu_us %.0f\ncli_sandbox_us %.1f\n", w / 20, c * 1e6 / hz / 20, d / 20 / 1000 }'
	} >"$WORK/gv-sample"
	gv_clean
}

# Runaways under a 64 MiB limit. Results: lines "KIND exit_code
# over_limit_mib wake_to_kill_ms kill_to_exit_ms peak_growth_mib wall_ms"
# ("-" where the shim logged no own-limit verdict) in $WORK/gv-runaway.
phase_gvisor_runaway() {
	local pod="$PREFIX-gvr" kind r id mem base peak t0 t1 rc verdict log="$DIR/containerd.log"
	local -A cmd=([dd]='dd if=/dev/zero of=/dev/null bs=300M count=1' [sort]='head -c 400000000 /dev/zero | sort')
	note "gvisor runaways: $R runs each"
	gv_pod "$pod"
	mem=/sys/fs/cgroup/memory/$NS/$pod
	: >"$WORK/gv-runaway"
	for ((r = 0; r < R; r++)); do
		for kind in dd sort; do
			id="$PREFIX-gvr-$kind$r"
			sleep 1
			echo 0 >"$mem/memory.max_usage_in_bytes"
			base=$(<"$mem/memory.usage_in_bytes")
			t0=${EPOCHREALTIME//[.,]/}
			rc=0
			gv_join "$pod" "$id" --rm --memory-limit "$MIB64" -- /bin/sh -c "${cmd[$kind]}" >/dev/null 2>&1 || rc=$?
			t1=${EPOCHREALTIME//[.,]/}
			peak=$(<"$mem/memory.max_usage_in_bytes")
			verdict=$(grep -F "verdict id=$id own_limit:" "$log" | head -1 || true)
			grep -F "id=$id" "$log" | grep -v -F 'events:' >>"$WORK/gv-runaway.log" || true
			awk -v k="$kind" -v rc="$rc" -v p="$peak" -v b="$base" -v w=$(((t1 - t0) / 1000)) -v lim="$MIB64" -v line="$verdict" '
				function field(key,   m) { return match(line, " " key "=[^ ;]*") ? substr(line, RSTART + length(key) + 2, RLENGTH - length(key) - 2) : "" }
				function ms(d,   v) {
					if (d == "") return "-"
					v = d + 0
					if (d ~ /ms$/) return sprintf("%.1f", v)
					if (d ~ /µs$|us$/) return sprintf("%.3f", v / 1000)
					if (d ~ /ns$/) return sprintf("%.6f", v / 1e6)
					return sprintf("%.1f", v * 1000)
				}
				BEGIN {
					u = field("usage")
					printf "%s %s %s %s %s %.0f %s\n", k, rc, u == "" ? "-" : sprintf("%.1f", (u - lim) / 1048576),
						ms(field("woke_to_kill")), ms(field("kill_to_exit")), (p - b) / 1048576, w
				}' >>"$WORK/gv-runaway"
		done
	done
	gv_clean
}

# Issue 20's matrix: a container's own limit (64 MiB) against allocations
# that take it over at once, oomguard beside runsc alone, ptrace and
# systrap, with and without a 100 MB neighbour (oomguard-bench burst).
# Results: $WORK/gv-burst.tsv (one line per container) and
# $WORK/gv-burst.md (the table).
phase_gvisor_burst() {
	note "gvisor bursts: sizes $BURST_SIZES MiB, $BURST_RUNS runs each, ptrace and systrap"
	"$BENCH_BIN" burst --ctr "$CTR_BIN" --address "$DIR/containerd.sock" --namespace "$NS" \
		--rootfs "$ROOTFS" --work "$WORK" --log "$DIR/containerd.log" --runsc "$RUNSC_NEW" \
		--runs "$BURST_RUNS" --sizes "$BURST_SIZES" --limit "$MIB64" \
		--table "$WORK/gv-burst.md" >"$WORK/gv-burst.tsv" || die "oomguard-bench burst failed"
}

# RunPodSandbox to a running container in a networked gVisor pod (CRI, as a
# kubelet drives it), systrap and ptrace, beside stock gVisor, and the
# serving shim's PSS (integration test cri_network::bench_networked_pod_start,
# the release shim). Results: $WORK/gv-cri.md.
phase_gvisor_cri() {
	note "gvisor pods through CRI: $BURST_RUNS rounds"
	(cd "$REPO" && OOMGUARD_SHIM_DIR=$SHIM_DIR OOMGUARD_BENCH_RUNS=$BURST_RUNS "${CARGO:-cargo}" test -q \
		-p oomguard-integration --test cri_network -- --ignored --nocapture --exact bench_networked_pod_start) \
		>"$WORK/gv-cri.out" 2>&1 || die "bench_networked_pod_start failed: $(tail -20 "$WORK/gv-cri.out")"
	grep -E '^\||^\(' "$WORK/gv-cri.out" >"$WORK/gv-cri.md" || true
}

phase_gvisor() {
	if [[ ! -x $RUNSC_NEW ]]; then
		warn "no $RUNSC_NEW (hack/deps.sh runsc): gVisor rows skipped"
		return 0
	fi
	if [[ -z $USAGE_BIN ]]; then
		(cd "$REPO" && run_logged "$CACHE/logs/bench-build.log" "${CARGO:-cargo}" build --release \
			--example gvisor_usage -p oomguard-runtimes) || die "build of gvisor_usage failed"
		USAGE_BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/examples/gvisor_usage
	fi
	gvisor_lane_configs
	lane_oomguard_configs "$SHIM_DIR/containerd-shim-oomguard-v2" "$WORK/oomguard-rooted" "$DIR/runsc-root"
	cp "$WORK/oomguard-rooted/runsc.toml" "$WORK/runsc.toml"
	phase_gvisor_idle limits
	phase_gvisor_idle nolimits
	phase_gvisor_sample
	phase_gvisor_runaway
	phase burst && phase_gvisor_burst
	phase gvisor-cri && phase_gvisor_cri
}

# ---------------------------------------------------------------- report

val() { awk -v k="$2" '$1 == k { print $2 }' "$WORK/idle.$1"; }

ratio() { # STOCK OOMGUARD
	awk -v a="$1" -v b="$2" 'BEGIN { num = "^-?[0-9.]+$"
		if (a !~ num || b !~ num) print "n/a"; else if (a + 0 == 0) print (b + 0 == 0 ? "=" : "n/a"); else printf "%.2f\n", b / a }'
}

row() { # LABEL STOCK OOMGUARD
	printf '| %s | %s | %s | %s |\n' "$1" "$2" "$3" "$(ratio "$2" "$3")"
}

# "p50 p99 n ok" of column COL (4: TaskOOM ms, 8: kill counter ms) of
# KIND's OOM latency runs (nearest rank), from oomlat.tsv.
oom_stats() { # KIND [COL]
	local col=${2:-4} nok
	nok=$(awk -F'\t' -v k="$1" '$1 == "latency" && $2 == k { n++; if ($7 == "ok") ok++ } END { printf "%d %d", n, ok }' "$WORK/oomlat.tsv")
	awk -F'\t' -v k="$1" -v c="$col" '$1 == "latency" && $2 == k && $c != "-" && $c != "" { print $c }' "$WORK/oomlat.tsv" >"$WORK/col"
	pcts "$WORK/col" "$nok"
}

# "p50 p99 EXTRA" of the numbers in FILE (nearest rank); "- -" when none.
pcts() { # FILE EXTRA
	sort -g "$1" | awk -v x="$2" '{ v[++m] = $1 + 0 }
		END {
			if (m == 0) { printf "- - %s\n", x; exit }
			i50 = int(0.5 * m); if (i50 < 0.5 * m) i50++
			i99 = int(0.99 * m); if (i99 < 0.99 * m) i99++
			printf "%.2f %.2f %s\n", v[i50], v[i99], x
		}'
}

oom_rows() {
	[[ -s $WORK/oomlat.tsv ]] || return 0
	local label a b pre
	local -a st os sk ok sh sf
	for s in "stock:oomguard::runc, cgroup v1 (this host)" "stock-gvisor:oomguard-gvisor::gVisor (runsc, systrap, network host), cgroup v1" \
		"v2-stock:v2-oomguard:v2-:runc, cgroup v2 (qemu lane, TCG)"; do
		IFS=: read -r a b pre label <<<"$s"
		grep -q "^latency	$a	" "$WORK/oomlat.tsv" || continue
		read -r -a st <<<"$(oom_stats "$a")"
		read -r -a os <<<"$(oom_stats "$b")"
		read -r -a sk <<<"$(oom_stats "$a" 8)"
		read -r -a ok <<<"$(oom_stats "$b" 8)"
		row "OOM kill -> TaskOOM, $label, p50 ms" "${st[0]}" "${os[0]}"
		row "OOM kill -> TaskOOM, $label, p99 ms" "${st[1]}" "${os[1]}"
		printf '| (runs with one TaskOOM before TaskExit) | %s/%s | %s/%s | |\n' "${st[3]}" "${st[2]}" "${os[3]}" "${os[2]}"
		printf '| (memcg OOM -> kill counter moved, as the measuring process saw it: p50 / p99 ms) | %s / %s | %s / %s | |\n' \
			"${sk[0]}" "${sk[1]}" "${ok[0]}" "${ok[1]}"
		if [[ $b != *gvisor && -s $WORK/oomlat-shim.tsv ]]; then
			awk -F'\t' -v p="$pre" 'index($1, p) == 1 && (p != "" || $1 !~ /^v2-/) && $2 != "-" { print $2 }' "$WORK/oomlat-shim.tsv" >"$WORK/col"
			read -r -a sh <<<"$(pcts "$WORK/col" "")"
			awk -F'\t' -v p="$pre" 'index($1, p) == 1 && (p != "" || $1 !~ /^v2-/) { print $3 }' "$WORK/oomlat-shim.tsv" >"$WORK/col"
			read -r -a sf <<<"$(pcts "$WORK/col" "")"
			printf '| (oomguard: its notification -> TaskOOM queued, when not at once; Forward call: p50 / p99 ms) | | %s / %s; %s / %s | |\n' \
				"${sh[0]}" "${sh[1]}" "${sf[0]}" "${sf[1]}"
		fi
	done
}

storm_rows() {
	[[ -s $WORK/storm.tsv ]] || return 0
	local -a a b
	IFS=$'\t' read -r -a a <<<"$(awk -F'\t' '$2 == "stock"' "$WORK/storm.tsv")"
	IFS=$'\t' read -r -a b <<<"$(awk -F'\t' '$2 == "oomguard"' "$WORK/storm.tsv")"
	printf '| %s containers OOM at once: one TaskOOM before TaskExit | %s | %s | |\n' "$S" "${a[4]:--}" "${b[4]:--}"
	printf '| %s containers OOM at once: exit 137 | %s | %s | |\n' "$S" "${a[5]:--}" "${b[5]:--}"
	row "$S containers OOM at once: barrier release to last TaskExit, ms" "${a[6]:--}" "${b[6]:--}"
	row "$S containers OOM at once: the shims' CPU from release to last TaskExit (with their children), ms" "${a[7]:--}" "${b[7]:--}"
}

report() {
	local ver=$1 s o label f
	local -a st os
	local rev
	rev=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')
	[[ -z $(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null) ]] || rev+="+dirty"
	printf '## oomguard vs stock shim, containerd %s\n\n' "$ver"
	printf -- '- date: %s; host: %s CPUs, kernel %s, cgroup %s\n' "$(date -Is)" "$(nproc)" "$(uname -r)" \
		"$([[ -e /sys/fs/cgroup/cgroup.controllers ]] && echo v2 || echo 'v1 (hybrid)')"
	printf -- '- containerd: %s; runc: %s\n' "$("$CONTAINERD_BIN" --version | awk '{ print $3 }')" "$(runc --version | awk 'NR == 1 { print $3 }')"
	printf -- '- oomguard: %s (git %s); stock: %s\n' "$OG_BIN" "$rev" "$STOCK_BIN"
	printf -- '- N=%s idle containers, M=%s latency rounds (+%s warm-up, interleaved), T=%ss idle window, O=%s OOM rounds, F=%s kernel log lines/s, S=%s storm containers; phases: %s\n' \
		"$N" "$M" "$WARMUP" "$T" "$O" "$F" "$S" "${PHASES:1:-1}"
	printf -- '- load average before/after: %s / %s\n\n' "$LOAD0" "$(cut -d' ' -f1-3 /proc/loadavg)"

	printf '| metric | stock (runc.v2) | oomguard | oomguard/stock |\n| --- | ---: | ---: | ---: |\n'
	if [[ -s $WORK/lat-rm.stock ]]; then
		for f in "rm:ctr run --rm /bin/true (create+start+exit+delete)" "d:ctr run -d (create+start)" "del:ctr tasks delete -f + containers delete"; do
			label=${f#*:}
			read -r -a st <<<"$(stats "$WORK/lat-${f%%:*}.stock")"
			read -r -a os <<<"$(stats "$WORK/lat-${f%%:*}.oomguard")"
			row "$label, mean ms" "${st[0]}" "${os[0]}"
			row "$label, median ms" "${st[1]}" "${os[1]}"
			row "$label, p90 ms" "${st[2]}" "${os[2]}"
		done
	fi
	if [[ -s $WORK/idle.stock ]]; then
		row "shim PSS per container, KiB" "$(val stock pss)" "$(val oomguard pss)"
		row "shim RSS per container, KiB" "$(val stock rss)" "$(val oomguard rss)"
		row "shim USS (private) per container, KiB" "$(val stock uss)" "$(val oomguard uss)"
		row "shim anonymous PSS per container, KiB" "$(val stock anon)" "$(val oomguard anon)"
		row "threads per shim (mean)" "$(val stock threads)" "$(val oomguard threads)"
		row "threads per shim (max)" "$(val stock threads_max)" "$(val oomguard threads_max)"
		row "idle CPU, all $N shims, ${T}s, ticks (1/$CLK_TCK s)" "$(val stock cpu_ticks)" "$(val oomguard cpu_ticks)"
		row "idle CPU, all $N shims, ${T}s, ms (utime+stime)" "$(val stock cpu_ms_stat)" "$(val oomguard cpu_ms_stat)"
		row "idle CPU, all $N shims, ${T}s, ms (cpuacct)" "$(val stock cpu_ms_sched)" "$(val oomguard cpu_ms_sched)"
		row "idle context switches/s, all $N shims" "$(val stock cswitch_per_s)" "$(val oomguard cswitch_per_s)"
		printf '| (shim threads that ended in that window) | %s | %s | |\n' "$(val stock threads_ended)" "$(val oomguard threads_ended)"
		printf '| (host kernel log lines during that window) | %s | %s | |\n' "$(val stock kmsg_lines)" "$(val oomguard kmsg_lines)"
		if [[ -n $(val oomguard flood_ticks) ]]; then
			row "idle CPU, all $N shims, ${T}s under $F kernel log lines/s, ticks" "$(val stock flood_ticks)" "$(val oomguard flood_ticks)"
			row "idle CPU, all $N shims, ${T}s under $F kernel log lines/s, ms (cpuacct)" "$(val stock flood_ms_sched)" "$(val oomguard flood_ms_sched)"
			row "idle context switches/s, all $N shims, under the flood" "$(val stock flood_cswitch_per_s)" "$(val oomguard flood_cswitch_per_s)"
			printf '| (kernel log lines in the flood window: written / seen) | %s / %s | %s / %s | |\n' \
				"$(val stock flood_written)" "$(val stock flood_kmsg_lines)" "$(val oomguard flood_written)" "$(val oomguard flood_kmsg_lines)"
		fi
	fi
	if [[ -s $WORK/high.stock ]]; then
		hv() { awk -v k="$2" '$1 == k { print $2 }' "$WORK/high.$1"; }
		row "CPU, all $H shims, containers at 95% of their limit, ${T}s, ms (utime+stime)" "$(hv stock cpu_ms_stat)" "$(hv oomguard cpu_ms_stat)"
		row "CPU, all $H shims, containers at 95% of their limit, ${T}s, ms (cpuacct)" "$(hv stock cpu_ms_sched)" "$(hv oomguard cpu_ms_sched)"
		row "context switches/s, all $H shims at 95%" "$(hv stock cswitch_per_s)" "$(hv oomguard cswitch_per_s)"
		printf '| (shim threads that ended in that window) | %s | %s | |\n' "$(hv stock threads_ended)" "$(hv oomguard threads_ended)"
		printf '| (memory warnings in the shims'"'"' log: /oomguard/memory-pressure) | - | %s / %s containers | |\n' "$(hv oomguard warned)" "$H"
	fi
	oom_rows
	storm_rows
	s=$(stat -L -c %s "$STOCK_BIN")
	o=$(stat -L -c %s "$OG_BIN")
	row "binary size, KiB" "$((s / 1024))" "$((o / 1024))"
	printf '\n'
	if [[ -s $WORK/idle.stock ]] && [[ $(val stock shims) != "$N" || $(val oomguard shims) != "$N" ]]; then
		printf 'Warning: shim processes found for %s containers: stock %s, oomguard %s.\n\n' "$N" "$(val stock shims)" "$(val oomguard shims)"
	fi

	if [[ -s $WORK/floor-ctr ]]; then
		printf 'Reference floors (no shim involved), ms: mean / median / p90\n\n'
		printf '| floor | mean | median | p90 |\n| --- | ---: | ---: | ---: |\n'
		read -r -a st <<<"$(stats "$WORK/floor-ctr")"
		printf '| ctr version (client start-up + 1 RPC) | %s | %s | %s |\n' "${st[0]}" "${st[1]}" "${st[2]}"
		if [[ -s $WORK/floor-runc ]]; then
			read -r -a st <<<"$(stats "$WORK/floor-runc")"
			printf '| runc run /bin/true (no containerd) | %s | %s | %s |\n' "${st[0]}" "${st[1]}" "${st[2]}"
		fi
	fi
	if [[ -s $WORK/gv-sample ]]; then
		report_gvisor
	fi
}

gv() { awk -v k="$2" '$1 == k { gsub("_", " ", $2); print $2 }' "$WORK/$1"; }

report_gvisor() {
	local kind
	printf '\n## gVisor pod: containers'"'"' own memory limits (runsc %s, oomguard only)\n\n' \
		"$("$RUNSC_NEW" --version | awk 'NR == 1 { print $3 }')"
	printf '| metric | without limits | with 64 MiB limits | with/without |\n| --- | ---: | ---: | ---: |\n'
	row "idle CPU of the pod's shim processes ($(gv gv-idle.limits shims): one serves the pod), ${T}s, ms (utime+stime)" \
		"$(gv gv-idle.nolimits shim_cpu_ms)" "$(gv gv-idle.limits shim_cpu_ms)"
	row "idle CPU of the pod's shim processes, ${T}s, ms (schedstat)" \
		"$(gv gv-idle.nolimits shim_sched_ms)" "$(gv gv-idle.limits shim_sched_ms)"
	row "idle CPU of the sandbox ($G sleeping containers), ${T}s, ms" \
		"$(gv gv-idle.nolimits sandbox_cpu_ms)" "$(gv gv-idle.limits sandbox_cpu_ms)"
	printf '\n| one sample of a container'"'"'s own usage | wall µs | client CPU µs | sandbox CPU µs |\n| --- | ---: | ---: | ---: |\n'
	printf '| control socket, one batched read (what the shim does) | %s | %s | %s |\n' \
		"$(gv gv-sample urpc_wall_us)" "$(gv gv-sample urpc_cpu_us)" "$(gv gv-sample urpc_sandbox_us)"
	printf '| runsc read-control, one file | %s | %s | %s |\n' \
		"$(gv gv-sample cli_wall_us)" "$(gv gv-sample cli_cpu_us)" "$(gv gv-sample cli_sandbox_us)"
	printf '\n| runaway under a 64 MiB limit, %s runs | exit codes | over the limit when read, MiB (mean / max) | wake to kill sent, ms (mean / max) | kill to exit, ms (mean / max) | sandbox memcg peak growth, MiB (mean / max) | ctr run, ms (mean) |\n| --- | --- | ---: | ---: | ---: | ---: | ---: |\n' "$R"
	for kind in dd sort; do
		awk -v k="$kind" '$1 == k {
			codes = codes (codes == "" ? "" : ",") $2
			for (i = 3; i <= 7; i++) if ($i != "-") { s[i] += $i; c[i]++; if (!(i in m) || $i > m[i]) m[i] = $i }
		}
		function f(i) { return c[i] ? sprintf("%.1f / %.1f", s[i] / c[i], m[i]) : "-" }
		END {
			label = (k == "dd") ? "dd bs=300M count=1 (one 300 MB read)" : "head -c 400M /dev/zero | sort (~35 MB/s)"
			printf "| %s | %s | %s | %s | %s | %s | %.0f |\n", label, codes, f(3), f(4), f(5), f(6), c[7] ? s[7] / c[7] : 0
		}' "$WORK/gv-runaway"
	done
	printf '\nStock gVisor enforces no container'"'"'s own limit in a pod: the same runaways complete (exit 0).\n'
	if [[ -s $WORK/gv-cri.md ]]; then
		printf '\n### A networked gVisor pod through CRI: RunPodSandbox to a running container\n\n'
		cat "$WORK/gv-cri.md"
	fi
	if [[ -s $WORK/gv-burst.md ]]; then
		printf '\n### Bursts against a container'"'"'s own 64 MiB limit (runsc %s, %s runs each)\n\n' "${RUNSC_NEW_VERSION:-20240729}" "$BURST_RUNS"
		cat "$WORK/gv-burst.md"
		awk -F'\t' '$1 == "alive" { n++; if ($5 == 1) ok++ } END { if (n) printf "\nThe idle container A (and the hog) still running after every pod: %d of %d.\n", ok, n }' "$WORK/gv-burst.tsv"
	fi
}

# ---------------------------------------------------------------- main

"$REPO/hack/deps.sh"
ROOTFS=$("$REPO/hack/rootfs.sh")

if [[ -n ${OOMGUARD_SHIM_DIR:-} ]]; then
	SHIM_DIR=$OOMGUARD_SHIM_DIR
else
	note "cargo build --release -p oomguard-shim"
	(cd "$REPO" && run_logged "$CACHE/logs/bench-build.log" "${CARGO:-cargo}" build --release -p oomguard-shim) ||
		die "build failed"
	SHIM_DIR=${CARGO_TARGET_DIR:-$REPO/target}/release
fi
if [[ -n ${OOMGUARD_BENCH_BIN:-} ]]; then
	BENCH_BIN=$OOMGUARD_BENCH_BIN
else
	(cd "$REPO" && run_logged "$CACHE/logs/bench-build.log" "${CARGO:-cargo}" build --release -p oomguard-bench) ||
		die "build of oomguard-bench failed"
	BENCH_BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/oomguard-bench
fi
[[ -x $BENCH_BIN ]] || die "$BENCH_BIN does not exist"
BENCH_BIN=$(realpath -- "$BENCH_BIN")
SHIM_DIR=$(realpath -- "$SHIM_DIR")
OG_BIN="$SHIM_DIR/containerd-shim-oomguard-v2"
[[ -x $OG_BIN ]] || die "$OG_BIN does not exist"
mkdir -p "$CACHE/bench"

for VER in "${VERS[@]}"; do
	LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
	CONTAINERD_BIN="$(containerd_bin_dir "$VER")/containerd"
	CTR_BIN="$(containerd_bin_dir "$VER")/ctr"
	STOCK_BIN=$(readlink -f "$(containerd_bin_dir "$VER")/containerd-shim-runc-v2")
	DIR=$(mktemp -d /tmp/oomguard-bench.XXXXXX)
	WORK=$(mktemp -d)
	note "containerd $VER in $DIR, shim from $SHIM_DIR"
	"$REPO/hack/containerd.sh" start "$VER" "$DIR" "$SHIM_DIR" >/dev/null

	if phase latency; then
		phase_latency
		phase_floors
	fi
	phase oom && phase_oom_latency
	if phase idle; then
		for k in "${KINDS[@]}"; do
			phase_idle "$k"
		done
	fi
	if phase high; then
		for k in "${KINDS[@]}"; do
			phase_high "$k"
		done
	fi
	phase storm && phase_storm
	phase v2 && phase_v2 "$VER"
	phase gvisor && phase_gvisor

	out="$CACHE/bench/results-$VER.md"
	report "$VER" >"$out"
	for k in "${KINDS[@]}"; do
		for f in "$WORK"/lat-*."$k" "$WORK/idle-start.$k"; do
			[[ -e $f ]] || continue
			m=${f##*/}
			awk -v m="${m%."$k"}" -v k="$k" '{ print m "\t" k "\t" $1 }' "$f"
		done
	done >"$CACHE/bench/samples-$VER.tsv"
	for f in floor-ctr floor-runc; do
		[[ -s $WORK/$f ]] && awk -v m="$f" '{ print m "\t-\t" $1 }' "$WORK/$f"
	done >>"$CACHE/bench/samples-$VER.tsv"
	[[ ! -s $WORK/oomlat.tsv ]] || cp "$WORK/oomlat.tsv" "$CACHE/bench/oom-latency-$VER.tsv"
	[[ ! -s $WORK/oomlat-shim.tsv ]] || cp "$WORK/oomlat-shim.tsv" "$CACHE/bench/oom-latency-shim-$VER.tsv"
	[[ ! -s $WORK/storm.tsv ]] || cp "$WORK/storm.tsv" "$CACHE/bench/storm-$VER.tsv"
	[[ ! -s $WORK/gv-burst.tsv ]] || cp "$WORK/gv-burst.tsv" "$CACHE/bench/gvisor-burst-$VER.tsv"
	if [[ -s $WORK/gv-runaway ]]; then
		cp "$WORK/gv-runaway" "$CACHE/bench/gvisor-runaway-$VER.txt"
		cp "$WORK/gv-runaway.log" "$CACHE/bench/gvisor-runaway-$VER.log"
	fi
	cat "$out"
	printf '\n(written to %s; latency samples in µs: %s)\n\n' "${out#"$REPO"/}" ".cache/bench/samples-$VER.tsv"
	cleanup_ver
done
