#!/usr/bin/env bash
# Boot the cgroup v2 VM once and run the lane's scenarios in it.
#
# usage: hack/v2/run.sh [options] [WORKDIR]
#
#   --containerd VER   1.7 (default) or 2
#   --shim PATH        the oomguard shim to test (default:
#                      $OOMGUARD_SHIM_DIR/containerd-shim-oomguard-v2, else
#                      target/debug/containerd-shim-oomguard-v2); its debug info
#                      is stripped on the way into the payload
#   --repeat N         how many times the repeated init OOM runs per runtime (default 3)
#   --repeat-par K     how many of those run at once (default 1)
#   --global-repeat N  how many times the global-oom scenario runs (default 1)
#   --scenarios LIST   comma-separated subset (default: all; see guest-test.sh)
#   --cgroup v1|v2     v2 (default): boot with cgroup_no_v1=all, cgroup2 on
#                      /sys/fs/cgroup; v1: the memory controller on cgroup v1,
#                      mounted the way a hybrid host has it (guest-init.sh)
#   --bench N          instead of the scenarios: N rounds of the OOM kill ->
#                      TaskOOM latency benchmark, stock shim and oomguard
#                      interleaved (OOMGUARD-BENCH lines; see hack/bench.sh)
#   --bench-tool PATH  the oomguard-bench binary for --bench (default:
#                      $OOMGUARD_BENCH_BIN, else target/release/oomguard-bench)
#   --runtimes LIST    comma-separated subset of runc,oomguard (default: both)
#   --timeout S        kill the VM after S seconds (default 900 + 10 s per repeat;
#                      a run takes ~3 min on an idle 2-core host, TCG on a busy
#                      one is much slower)
#   --mem MB           guest memory (default 2048)
#   --smp N            guest CPUs (default 2)
#   --serial           run a scenario's two runtimes one after the other (default:
#                      side by side)
#   --kmsg             kernel messages on the console (default: errors only)
#   --dump             print the whole event stream and containerd's log at the end
#   --keep             keep WORKDIR's payload and initrd
#
# WORKDIR (default: a new /tmp/oomguard-v2.XXXXXX) receives console.log. The
# console is printed as it comes, then a summary. Exits 0 when the VM booted
# and every planned result came back (OOMGUARD-PLAN = OOMGUARD-DONE = number
# of OOMGUARD-RESULT lines); it does not judge the results (the Rust test
# integration/tests/cgroup_v2.rs does). Exits 1, loudly, otherwise.
#
# A guest kernel soft lockup (an emulator fault, seen once under TCG) panics
# the guest at once; the VM is then booted once more, the first console kept
# as WORKDIR/console.lockup-1.log.
#
# Runs hack/v2/setup.sh first (a quick no-op when everything is in place).
set -euo pipefail
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

version=1.7
cgroup=v2
bench=0
bench_tool=${OOMGUARD_BENCH_BIN:-}
shim=""
repeat=3
repeat_par=1
global_repeat=1
scenarios=""
runtimes="runc,oomguard"
timeout_s=""
mem=2048
smp=2
kmsg=0
serial=0
dump=0
keep=0
work=""
while (($#)); do
	case $1 in
	--containerd) version=${2:?}; shift ;;
	--shim) shim=${2:?}; shift ;;
	--repeat) repeat=${2:?}; shift ;;
	--repeat-par) repeat_par=${2:?}; shift ;;
	--global-repeat) global_repeat=${2:?}; shift ;;
	--scenarios) scenarios=${2:?}; shift ;;
	--cgroup) cgroup=${2:?}; shift ;;
	--bench) bench=${2:?}; shift ;;
	--bench-tool) bench_tool=${2:?}; shift ;;
	--runtimes) runtimes=${2:?}; shift ;;
	--timeout) timeout_s=${2:?}; shift ;;
	--mem) mem=${2:?}; shift ;;
	--smp) smp=${2:?}; shift ;;
	--kmsg) kmsg=1 ;;
	--serial) serial=1 ;;
	--dump) dump=1 ;;
	--keep) keep=1 ;;
	-h | --help) usage 0 ;;
	-*) echo "run.sh: unknown option '$1'" >&2; usage 2 >&2 ;;
	*)
		[[ -z $work ]] || die "only one WORKDIR may be given"
		work=$1
		;;
	esac
	shift
done
case $version in 1.7 | 2) ;; *) die "--containerd must be 1.7 or 2 (the base initramfs holds those two)" ;; esac
[[ $repeat =~ ^[0-9]+$ && $repeat_par =~ ^[1-9][0-9]*$ && $global_repeat =~ ^[1-9][0-9]*$ ]] ||
	die "--repeat, --repeat-par and --global-repeat take numbers"
case $cgroup in v1 | v2) ;; *) die "--cgroup must be v1 or v2" ;; esac
[[ $bench =~ ^[0-9]+$ ]] || die "--bench takes a number of rounds"
if ((bench)); then
	: "${bench_tool:=$REPO/target/release/oomguard-bench}"
	[[ -x $bench_tool ]] || die "no oomguard-bench at $bench_tool (cargo build --release -p oomguard-bench, or --bench-tool PATH)"
fi
: "${timeout_s:=$((900 + 10 * repeat))}"
need_root

setup=$("$REPO/hack/v2/setup.sh" --print) || die "hack/v2/setup.sh failed"
eval "$setup" # KERNEL KERNEL_VERSION BASE CONTAINERD_1_7 CONTAINERD_2 QEMU

if [[ -z $shim ]]; then
	shim="${OOMGUARD_SHIM_DIR:-$REPO/target/debug}/containerd-shim-oomguard-v2"
fi
[[ -x $shim ]] || die "no shim binary at $shim (cargo build -p oomguard-shim, or --shim PATH)"

if [[ -z $work ]]; then
	work=$(mktemp -d /tmp/oomguard-v2.XXXXXX)
else
	mkdir -p "$work"
fi
work=$(cd "$work" && pwd -P)

tpid=""
cleanup() {
	# qemu runs under timeout, which put both in a process group of their own:
	# signal the timeout pid, it passes the signal on to qemu.
	if [[ -n $tpid ]] && kill -0 "$tpid" 2>/dev/null; then
		kill -TERM "$tpid" 2>/dev/null || true
	fi
	if ((!keep)); then
		rm -rf "$work/payload" "$work/initrd.cpio" "$work/payload.cpio" "$work/console.fifo"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ payload
p="$work/payload"
rm -rf "$p"
mkdir -p "$p/payload/bin"
objcopy --strip-debug "$shim" "$p/payload/bin/containerd-shim-oomguard-v2" 2>/dev/null ||
	cp "$shim" "$p/payload/bin/containerd-shim-oomguard-v2"
chmod 0755 "$p/payload/bin/containerd-shim-oomguard-v2"
# The shim's libraries (the base has libc, libm, libgcc_s; anything else rides here).
for lib in $(ldd "$shim" 2>/dev/null | awk '/=> \// { print $3 } /^[ \t]*\// { print $1 }'); do
	mkdir -p "$p$(dirname "$lib")"
	cp -L "$lib" "$p$lib"
done
install -m 0755 "$REPO/hack/v2/guest-test.sh" "$p/payload/test.sh"
# This run's /init, over the base's (the kernel unpacks the archives in
# order): .cache/v2 is shared, and may hold another checkout's base.
install -m 0755 "$REPO/hack/v2/guest-init.sh" "$p/init"
if ((bench)); then
	cp "$bench_tool" "$p/payload/bin/oomguard-bench"
	chmod 0755 "$p/payload/bin/oomguard-bench"
fi
{
	printf 'VERSION=%s\n' "$version"
	printf 'REPEAT=%s\n' "$repeat"
	printf 'REPEAT_PAR=%s\n' "$repeat_par"
	printf 'GLOBAL_REPEAT=%s\n' "$global_repeat"
	printf 'RUNTIMES="%s"\n' "${runtimes//,/ }"
	[[ -z $scenarios ]] || printf 'SCENARIOS="%s"\n' "${scenarios//,/ }"
	((!dump)) || printf 'DUMP=1\n'
	((!serial)) || printf 'SERIAL=1\n'
	printf 'CGROUP=%s\n' "$cgroup"
	((!bench)) || printf 'BENCH=%s\n' "$bench"
} >"$p/payload/env"
(cd "$p" && find . -mindepth 1 | LC_ALL=C sort | /bin/busybox cpio -o -H newc >"$work/payload.cpio" 2>/dev/null) ||
	die "cpio of the payload failed"
# The kernel unpacks concatenated cpio archives one after the other.
ctd_part=$BASE
case $version in 1.7) ctd_part=$CONTAINERD_1_7 ;; 2) ctd_part=$CONTAINERD_2 ;; esac
cat "$BASE" "$ctd_part" "$work/payload.cpio" >"$work/initrd.cpio"

# ------------------------------------------------------------------ boot
# softlockup_panic: a guest CPU stuck in the kernel (seen once under TCG: both
# vCPUs spinning in runc from the first container on) panics at once, and
# -no-reboot ends qemu, instead of hanging until the timeout.
append="console=ttyS0 panic=-1 softlockup_panic=1 mitigations=off log_buf_len=8M"
if [[ $cgroup == v1 ]]; then
	append+=" oomguard_cgroup=v1"
else
	append+=" cgroup_no_v1=all"
fi
((kmsg)) || append+=" loglevel=3"
# shellcheck disable=SC2054 # the commas are qemu's
qemu=(
	"$QEMU" -accel tcg,thread=multi -cpu max -smp "$smp" -m "$mem"
	-machine q35 -nodefaults -display none -serial stdio -no-reboot
	-kernel "$KERNEL" -initrd "$work/initrd.cpio" -append "$append"
)
fifo="$work/console.fifo"
log="$work/console.log"
attempts=2 # a guest kernel lockup is the emulator's fault, not a result: boot once more
start=$(date +%s.%N)
for ((attempt = 1; attempt <= attempts; attempt++)); do
	note "booting $KERNEL_VERSION (cgroup $cgroup, containerd $version, shim $shim, repeat $repeat) in $work; timeout ${timeout_s}s; attempt $attempt of $attempts"
	rm -f "$fifo"
	mkfifo "$fifo"
	# (sed -u: line by line, so the console shows up as it happens)
	sed -u 's/\r$//' <"$fifo" | tee "$log" &
	tee_pid=$!
	timeout -k 10 "$timeout_s" "${qemu[@]}" </dev/null >"$fifo" 2>&1 &
	tpid=$!
	rc=0
	wait "$tpid" || rc=$?
	tpid=""
	wait "$tee_pid" || true
	grep -q 'soft lockup' "$log" && ! grep -q '^OOMGUARD-DONE ' "$log" || break
	((attempt < attempts)) || break
	mv "$log" "$work/console.lockup-$attempt.log"
	note "the guest kernel locked up (soft lockup, kept in console.lockup-$attempt.log): booting again"
done
elapsed=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')

# ------------------------------------------------------------------ verdict on the run
problems=()
grep -q 'soft lockup' "$log" && ! grep -q '^OOMGUARD-DONE ' "$log" &&
	problems+=("the guest kernel locked up (soft lockup) on every attempt")
((rc != 124 && rc != 137)) || problems+=("TIMEOUT: the VM was killed after ${timeout_s}s")
((rc == 0 || rc == 124 || rc == 137)) || problems+=("qemu exited $rc")
grep -q '^OOMGUARD-BOOT ' "$log" || problems+=("the VM did not boot (no OOMGUARD-BOOT line)")
grep -q '^OOMGUARD-BOOT ' "$log" && ! grep -q '^OOMGUARD-CONTAINERD-UP ' "$log" &&
	problems+=("containerd did not come up in the VM")
plan=$(sed -n 's/^OOMGUARD-PLAN \([0-9]*\).*/\1/p' "$log" | tail -1)
done_n=$(sed -n 's/^OOMGUARD-DONE \([0-9]*\).*/\1/p' "$log" | tail -1)
results=$(grep -c '^OOMGUARD-RESULT ' "$log" || true)
[[ -n $plan ]] || problems+=("no OOMGUARD-PLAN line")
[[ -n $done_n ]] || problems+=("no OOMGUARD-DONE line: the test script did not finish")
[[ -z $plan || -z $done_n || $plan == "$done_n" ]] || problems+=("planned $plan results, DONE says $done_n")
[[ -z $done_n || $done_n == "$results" ]] || problems+=("DONE says $done_n results, $results OOMGUARD-RESULT lines arrived")
while IFS= read -r line; do problems+=("${line#OOMGUARD-}"); done < <(grep '^OOMGUARD-ERROR' "$log" || true)
if ((bench)); then
	got=$(grep -c '^OOMGUARD-BENCH latency' "$log" || true)
	((got == 2 * bench)) || problems+=("bench: $got latency lines, expected $((2 * bench))")
fi

echo
echo "== summary: cgroup $cgroup, containerd $version, ${elapsed}s wall, $results results"
awk '/^OOMGUARD-RESULT / {
	ev = ""; ex = ""; ok = ""
	for (i = 4; i <= NF; i++) {
		split($i, kv, "=")
		if (kv[1] == "events") { ev = kv[2]; gsub("/tasks/", "", ev) }
		if (kv[1] == "exit") ex = kv[2]
		if (kv[1] == "oom_kill") ok = kv[2]
	}
	printf "%-20s %-9s exit=%-4s oom_kill=%-2s %s\n", $2, $3, ex, ok, ev
}' "$log" | sort | uniq -c | sort -k2,2 -k3,3 -s
echo "console: $log"
if ((${#problems[@]})); then
	echo
	for m in "${problems[@]}"; do echo "run.sh: FAIL: $m" >&2; done
	exit 1
fi
