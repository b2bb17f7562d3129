#!/bin/sh
# /init of the cgroup v2 lane's initramfs (built into .cache/v2/base.cpio by
# hack/v2/setup.sh; runs inside the VM as PID 1, busybox sh).
#
# Stage 1: runc cannot pivot_root while / is the initramfs (rootfs), so make /
# a bind mount, move it over /, chroot into it and run stage 2 there.
# Stage 2: mount proc, sys, devtmpfs, devpts, tmpfs on /run /tmp
# /var/lib/containerd, cgroup2 on /sys/fs/cgroup, enable +memory +pids for
# children, then run /payload/test.sh (from the payload cpio that
# hack/v2/run.sh appends) and power off. Every line the lane relies on starts
# with OOMGUARD-.
# With oomguard_cgroup=v1 on the kernel command line (run.sh --cgroup v1,
# which also leaves out cgroup_no_v1=all), the cgroups are mounted the way a
# hybrid host has them instead: a tmpfs on /sys/fs/cgroup, one v1 hierarchy
# per controller under it, and cgroup2 (no controllers) on
# /sys/fs/cgroup/unified.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

if [ "$1" != stage2 ]; then
	if ! mount --bind / /newroot; then
		echo "OOMGUARD-ERROR init: mount --bind / /newroot failed"
		poweroff -f
	fi
	cd /newroot || poweroff -f
	mount --move . / || { echo "OOMGUARD-ERROR init: mount --move failed"; poweroff -f; }
	exec chroot . /init stage2
fi

fail() {
	echo "OOMGUARD-ERROR init: $*"
	sync
	poweroff -f
	reboot -f
}

mount -t proc proc /proc || fail "mount proc"
mount -t sysfs sysfs /sys || fail "mount sysfs"
mount -t devtmpfs devtmpfs /dev || fail "mount devtmpfs"
mkdir -p /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts || fail "mount devpts"
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=0755 tmpfs /run || fail "mount /run"
mount -t tmpfs -o mode=1777 tmpfs /tmp || fail "mount /tmp"
mount -t tmpfs -o mode=0711 tmpfs /var/lib/containerd || fail "mount /var/lib/containerd"
if [ "${oomguard_cgroup:-v2}" = v1 ]; then
	mount -t tmpfs -o mode=0755 tmpfs /sys/fs/cgroup || fail "mount tmpfs on /sys/fs/cgroup"
	for c in cpu cpuacct cpuset memory devices freezer blkio pids; do
		grep -q "^${c}[[:space:]]" /proc/cgroups || continue
		mkdir -p /sys/fs/cgroup/$c
		mount -t cgroup -o $c cgroup /sys/fs/cgroup/$c || fail "mount the v1 $c hierarchy"
	done
	mkdir -p /sys/fs/cgroup/unified
	mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified || fail "mount cgroup2 on /sys/fs/cgroup/unified"
	controllers="v1:"
	for d in /sys/fs/cgroup/*; do
		[ "$d" = /sys/fs/cgroup/unified ] || controllers="$controllers ${d##*/}"
	done
else
	mount -t cgroup2 cgroup2 /sys/fs/cgroup || fail "mount cgroup2"
	echo "+memory +pids" >/sys/fs/cgroup/cgroup.subtree_control || fail "enable +memory +pids"
	controllers=$(cat /sys/fs/cgroup/cgroup.subtree_control)
fi
ip link set lo up 2>/dev/null
hostname oomguard-v2

echo "OOMGUARD-BOOT kernel=$(uname -r) uptime=$(cut -d' ' -f1 /proc/uptime) cpus=$(nproc) mem_kb=$(awk '/^MemTotal/ { print $2 }' /proc/meminfo) controllers=\"$controllers\""
if [ -x /payload/test.sh ]; then
	/payload/test.sh
	echo "OOMGUARD-EXIT rc=$? uptime=$(cut -d' ' -f1 /proc/uptime)"
else
	echo "OOMGUARD-ERROR init: no /payload/test.sh (was the payload cpio appended?)"
fi
sync
poweroff -f
reboot -f
