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
#   idle     per runtime in turn: N containers running /bin/sleep, 1 s to settle,
#            then the shims' CPU time over T seconds (utime+stime of
#            /proc/PID/stat; on-CPU ns of /proc/PID/task/*/schedstat), their
#            context switches, then per shim PSS, RSS and USS (smaps_rollup) and
#            threads (/proc/PID/status); then the containers are removed. The
#            host's kernel log lines in the window are counted too: oomguard
#            shims read /dev/kmsg, so host kernel messages (other containers'
#            OOM kills...) wake them.
#            (Their "ctr run -d" times go to the samples file only: the two
#            runtimes are not interleaved there, so host load drifts between them.)
#   size     both shim binaries.
# Shims are the processes whose argv[0] is containerd-shim-{runc,oomguard}-v2
# and which have "-address DIR/containerd.sock". ctr sets no pod annotation, so
# both runtimes run one shim per container.
#
# Prints a markdown table and writes it to .cache/bench/results-VER.md (raw
# samples: .cache/bench/samples-VER.tsv). About 1 minute per VER on 2 cores, plus the build.
#
# Environment:
#   OOMGUARD_SHIM_DIR    directory holding containerd-shim-oomguard-v2; when set,
#                        nothing is built. Default: "cargo build --release -p
#                        oomguard-shim", then ${CARGO_TARGET_DIR:-target}/release.
#   BENCH_CONTAINERS     N, idle containers per runtime (default 20)
#   BENCH_RUNS           M, latency rounds per runtime (default 30)
#   BENCH_IDLE_SECONDS   T, idle window (default 10)
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
WARMUP=3
for v in N M T; do
	[[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done

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

cleanup_ver() {
	local id
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

# cpu_snapshot PID...: "ticks sched_ns ctxt_switches threads" summed over the
# processes (ticks: utime+stime of /proc/PID/stat, which includes exited
# threads; sched_ns and switches: over the live threads).
cpu_snapshot() {
	local p t st ticks=0 ns=0 cs=0 threads=0 f key n
	local -a fl
	for p in "$@"; do
		st=$(<"/proc/$p/stat") || die "shim $p is gone"
		st=${st##*) }
		read -r -a fl <<<"$st"
		ticks=$((ticks + fl[11] + fl[12]))
		for t in /proc/"$p"/task/*; do
			read -r f _ 2>/dev/null <"$t/schedstat" || continue
			ns=$((ns + f))
			threads=$((threads + 1))
			while read -r key n _; do
				case $key in
				voluntary_ctxt_switches: | nonvoluntary_ctxt_switches:) cs=$((cs + n)) ;;
				esac
			done 2>/dev/null <"$t/status" || true
		done
	done
	printf '%s %s %s %s\n' "$ticks" "$ns" "$cs" "$threads"
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
	sleep 1
	mapfile -t pids < <(shim_pids "$k")
	((${#pids[@]} == N)) || warn "$k: found ${#pids[@]} shim processes for $N containers"
	((${#pids[@]})) || die "$k: no shim processes found"

	# oomguard reads /dev/kmsg (OOM victim records), so every kernel log
	# line on the host wakes each of its shims: count them in the window.
	local c0 c1
	dmesg --follow-new --raw >"$WORK/kmsg.$k" 2>/dev/null &
	KMSG_PID=$!
	c0=$(cpu_snapshot "${pids[@]}")
	sleep "$T" &
	wait $! # (a signal's trap runs at once, not after the sleep)
	c1=$(cpu_snapshot "${pids[@]}")
	kill "$KMSG_PID" 2>/dev/null || true
	wait "$KMSG_PID" 2>/dev/null || true
	KMSG_PID=""

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
		read -r t0 n0 s0 _ <<<"$c0"
		read -r t1 n1 s1 _ <<<"$c1"
		awk -v dt=$((t1 - t0)) -v dn=$((n1 - n0)) -v ds=$((s1 - s0)) -v hz="$CLK_TCK" -v T="$T" -v n="${#pids[@]}" 'BEGIN {
			printf "cpu_ms_stat %.2f\ncpu_ms_sched %.3f\ncswitch_per_s %.2f\n", dt * 1000 / hz, dn / 1e6, ds / T
		}'
	} >"$WORK/idle.$k"

	note "removing the $N containers"
	for ((i = 0; i < N; i++)); do
		remove_container "$PREFIX-$k-idle$i"
	done
}

# ---------------------------------------------------------------- report

val() { awk -v k="$2" '$1 == k { print $2 }' "$WORK/idle.$1"; }

ratio() { # STOCK OOMGUARD
	awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 == 0) print (b + 0 == 0 ? "=" : "n/a"); else printf "%.2f\n", b / a }'
}

row() { # LABEL STOCK OOMGUARD
	printf '| %s | %s | %s | %s |\n' "$1" "$2" "$3" "$(ratio "$2" "$3")"
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
	printf -- '- N=%s idle containers, M=%s latency rounds (+%s warm-up, interleaved), T=%ss idle window\n' "$N" "$M" "$WARMUP" "$T"
	printf -- '- load average before/after: %s / %s\n\n' "$LOAD0" "$(cut -d' ' -f1-3 /proc/loadavg)"

	printf '| metric | stock (runc.v2) | oomguard | oomguard/stock |\n| --- | ---: | ---: | ---: |\n'
	for f in "rm:ctr run --rm /bin/true (create+start+exit+delete)" "d:ctr run -d (create+start)" "del:ctr tasks delete -f + containers delete"; do
		label=${f#*:}
		read -r -a st <<<"$(stats "$WORK/lat-${f%%:*}.stock")"
		read -r -a os <<<"$(stats "$WORK/lat-${f%%:*}.oomguard")"
		row "$label, mean ms" "${st[0]}" "${os[0]}"
		row "$label, median ms" "${st[1]}" "${os[1]}"
		row "$label, p90 ms" "${st[2]}" "${os[2]}"
	done
	row "shim PSS per container, KiB" "$(val stock pss)" "$(val oomguard pss)"
	row "shim RSS per container, KiB" "$(val stock rss)" "$(val oomguard rss)"
	row "shim USS (private) per container, KiB" "$(val stock uss)" "$(val oomguard uss)"
	row "shim anonymous PSS per container, KiB" "$(val stock anon)" "$(val oomguard anon)"
	row "threads per shim (mean)" "$(val stock threads)" "$(val oomguard threads)"
	row "threads per shim (max)" "$(val stock threads_max)" "$(val oomguard threads_max)"
	row "idle CPU, all $N shims, ${T}s, ms (utime+stime)" "$(val stock cpu_ms_stat)" "$(val oomguard cpu_ms_stat)"
	row "idle CPU, all $N shims, ${T}s, ms (schedstat)" "$(val stock cpu_ms_sched)" "$(val oomguard cpu_ms_sched)"
	row "idle context switches/s, all $N shims" "$(val stock cswitch_per_s)" "$(val oomguard cswitch_per_s)"
	printf '| (host kernel log lines during that window) | %s | %s | |\n' "$(val stock kmsg_lines)" "$(val oomguard kmsg_lines)"
	s=$(stat -L -c %s "$STOCK_BIN")
	o=$(stat -L -c %s "$OG_BIN")
	row "binary size, KiB" "$((s / 1024))" "$((o / 1024))"
	printf '\n'
	if [[ $(val stock shims) != "$N" || $(val oomguard shims) != "$N" ]]; then
		printf 'Warning: shim processes found for %s containers: stock %s, oomguard %s.\n\n' "$N" "$(val stock shims)" "$(val oomguard shims)"
	fi

	printf 'Reference floors (no shim involved), ms: mean / median / p90\n\n'
	printf '| floor | mean | median | p90 |\n| --- | ---: | ---: | ---: |\n'
	read -r -a st <<<"$(stats "$WORK/floor-ctr")"
	printf '| ctr version (client start-up + 1 RPC) | %s | %s | %s |\n' "${st[0]}" "${st[1]}" "${st[2]}"
	if [[ -s $WORK/floor-runc ]]; then
		read -r -a st <<<"$(stats "$WORK/floor-runc")"
		printf '| runc run /bin/true (no containerd) | %s | %s | %s |\n' "${st[0]}" "${st[1]}" "${st[2]}"
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

	phase_latency
	phase_floors
	for k in "${KINDS[@]}"; do
		phase_idle "$k"
	done

	out="$CACHE/bench/results-$VER.md"
	report "$VER" >"$out"
	for k in "${KINDS[@]}"; do
		for f in "$WORK"/lat-*."$k" "$WORK/idle-start.$k"; do
			m=${f##*/}
			awk -v m="${m%."$k"}" -v k="$k" '{ print m "\t" k "\t" $1 }' "$f"
		done
	done >"$CACHE/bench/samples-$VER.tsv"
	for f in floor-ctr floor-runc; do
		[[ -s $WORK/$f ]] && awk -v m="$f" '{ print m "\t-\t" $1 }' "$WORK/$f"
	done >>"$CACHE/bench/samples-$VER.tsv"
	cat "$out"
	printf '\n(written to %s; latency samples in µs: %s)\n\n' "${out#"$REPO"/}" ".cache/bench/samples-$VER.tsv"
	cleanup_ver
done
