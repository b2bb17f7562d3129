#!/usr/bin/env bash
# Prepare the cgroup v2 lane: a cgroup-v2-only Debian kernel booted under qemu
# (TCG), with a base initramfs holding containerd 1.7 and 2.x, runc and busybox.
#
# usage: hack/v2/setup.sh [--print]
#
#   --print   print the paths of the results (KERNEL=..., BASE=..., QEMU=...)
#
# What it makes, under .cache/v2/ (each step is skipped when its result exists;
# a run with nothing to do takes well under a second and prints nothing):
#   qemu-system-x86_64   apt (bookworm) qemu-system-x86 --no-install-recommends
#   kernel/vmlinux       bookworm's linux-image-amd64 (apt-get download, dpkg -x),
#                        the bzImage's XZ payload decompressed (qemu boots it by PVH,
#                        which saves the ~3 s TCG spends decompressing a bzImage)
#   kernel/tree/         the unpacked package, modules.dep made by depmod -b
#   base.cpio            busybox-static, hack/v2/guest-init.sh as /init, the host's
#                        runc + its libraries, the busybox root filesystem of
#                        hack/rootfs.sh at /rootfs
#   containerd-VER.cpio  containerd, ctr and the stock containerd-shim-runc-v2 of
#                        1.7 and 2 (/usr/local/containerd/VER/bin); run.sh boots
#                        base + one of these + its payload, concatenated
#
# Needs root. Runs hack/deps.sh first when the containerd trees are missing.
# Command output goes to .cache/logs/v2-setup.log. One setup.sh runs at a time.
set -euo pipefail
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

print=0
for arg in "$@"; do
	case $arg in
	--print) print=1 ;;
	-h | --help)
		sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
		exit 0
		;;
	*) die "unknown argument '$arg' (see --help)" ;;
	esac
done

need_root
V2="$CACHE/v2"
LOG="$CACHE/logs/v2-setup.log"
HERE="$REPO/hack/v2"
mkdir -p "$V2" "$CACHE/logs"

exec 8>"$V2/.setup.lock"
if ! flock -n 8; then
	note "waiting for another setup.sh to finish"
	flock -w 1800 8 || die "timed out waiting for the lock $V2/.setup.lock"
fi

TMPD=""
cleanup() { [[ -z $TMPD ]] || rm -rf "$TMPD"; }
trap cleanup EXIT

pkg_installed() {
	[[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) == installed ]]
}

# ------------------------------------------------------------------ qemu
if ! command -v qemu-system-x86_64 >/dev/null; then
	note "apt-get install qemu-system-x86"
	cmd=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends qemu-system-x86)
	if ! "${cmd[@]}" >>"$LOG" 2>&1; then
		note "install failed; running apt-get update and retrying"
		run_logged "$LOG" apt-get update -q || die "apt-get update failed"
		run_logged "$LOG" "${cmd[@]}" || die "could not install qemu-system-x86"
	fi
	command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86 installed but qemu-system-x86_64 is not on PATH"
fi

# ------------------------------------------------------------------ kernel
# extract_vmlinux BZIMAGE OUT: the kernel's scripts/extract-vmlinux, for XZ
# (what Debian uses) and, to be safe, gzip and zstd: find the compressed
# payload's magic, decompress from there, keep the first result that is ELF.
extract_vmlinux() {
	local img=$1 out=$2 magic tool off
	for spec in "fd377a585a00|xz -dc" "1f8b0800|gzip -dc" "28b52ffd|zstd -dc"; do
		magic=${spec%%|*}
		tool=${spec#*|}
		command -v "${tool%% *}" >/dev/null || continue
		# byte offsets of every occurrence of the magic
		for off in $(od -An -v -tx1 -w1 "$img" | tr -d ' \n' |
			grep -ob "$magic" | cut -d: -f1 | awk '$1 % 2 == 0 { print $1 / 2 }'); do
			tail -c +"$((off + 1))" "$img" | $tool >"$out.tmp" 2>/dev/null || true
			if [[ $(head -c4 "$out.tmp" | od -An -tx1 | tr -d ' \n') == 7f454c46 ]]; then
				mv "$out.tmp" "$out"
				return 0
			fi
		done
	done
	rm -f "$out.tmp"
	return 1
}

KDIR="$V2/kernel"
if [[ ! -s $KDIR/vmlinux || ! -s $KDIR/version ]]; then
	note "fetching bookworm's linux-image-amd64 -> ${KDIR#"$REPO"/}"
	TMPD=$(mktemp -d "$V2/.tmp.XXXXXX")
	# linux-image-amd64 is a metapackage: download the image it depends on.
	meta_dep() { apt-cache depends linux-image-amd64 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'; }
	img_pkg=$(meta_dep)
	if [[ -z $img_pkg ]]; then
		run_logged "$LOG" apt-get update -q || die "apt-get update failed"
		img_pkg=$(meta_dep)
	fi
	[[ -n $img_pkg ]] || die "cannot tell which linux-image package linux-image-amd64 depends on"
	if ! (cd "$TMPD" && apt-get -q -o APT::Sandbox::User=root download "$img_pkg") >>"$LOG" 2>&1; then
		run_logged "$LOG" apt-get update -q || die "apt-get update failed"
		(cd "$TMPD" && run_logged "$LOG" apt-get -q -o APT::Sandbox::User=root download "$img_pkg") ||
			die "could not download $img_pkg"
	fi
	deb=$(ls "$TMPD"/*.deb)
	mkdir "$TMPD/tree"
	dpkg -x "$deb" "$TMPD/tree" || die "dpkg -x $deb failed"
	kver=$(ls "$TMPD/tree/lib/modules")
	[[ -n $kver && -f $TMPD/tree/boot/vmlinuz-$kver ]] || die "$deb has no /boot/vmlinuz-$kver"
	# Debian's packages leave modules.dep to the postinst. kmod's depmod if the
	# machine has it, else busybox's (the lane itself loads no module today:
	# the serial console, cgroup2 and the initramfs are built in).
	depmod=(/bin/busybox depmod)
	for d in /sbin/depmod /usr/sbin/depmod; do [[ -x $d ]] && depmod=("$d") && break; done
	run_logged "$LOG" "${depmod[@]}" -b "$TMPD/tree" "$kver" || die "depmod failed"
	[[ -s $TMPD/tree/lib/modules/$kver/modules.dep ]] || die "depmod made no modules.dep"
	extract_vmlinux "$TMPD/tree/boot/vmlinuz-$kver" "$TMPD/vmlinux" ||
		die "could not extract an ELF vmlinux from vmlinuz-$kver"
	printf '%s %s\n' "$(dpkg-deb -f "$deb" Package)" "$(dpkg-deb -f "$deb" Version)" >"$TMPD/PACKAGE"
	rm -rf "$KDIR"
	mkdir -p "$KDIR"
	mv "$TMPD/tree" "$TMPD/vmlinux" "$TMPD/PACKAGE" "$KDIR/"
	printf '%s\n' "$kver" >"$KDIR/version"
	rm -rf "$TMPD"
	TMPD=""
fi

# ------------------------------------------------------------------ base initramfs
for ver in 1.7 2; do
	if [[ ! -x $CACHE/containerd/$ver/bin/containerd ]]; then
		note "containerd $ver missing: running hack/deps.sh"
		"$REPO/hack/deps.sh" || die "hack/deps.sh failed"
		break
	fi
done
ROOTFS=$("$REPO/hack/rootfs.sh") || die "hack/rootfs.sh failed"
[[ -x /usr/sbin/runc ]] || die "/usr/sbin/runc is missing: run hack/deps.sh"
if [[ ! -x /bin/busybox ]] || ldd /bin/busybox >/dev/null 2>&1; then
	die "/bin/busybox is not busybox-static: run hack/deps.sh"
fi

# copy_bin ROOT SRC DEST [SKIP_LIST]: the binary (symlinks followed) into
# ROOT/DEST, and the libraries ldd lists (those not named in SKIP_LIST, a file
# of paths the base already has).
copy_bin() {
	local r=$1 src=$2 dest=$3 skip=${4:-/dev/null} lib
	mkdir -p "$(dirname "$r$dest")"
	cp -L "$src" "$r$dest"
	for lib in $(ldd "$src" 2>/dev/null | awk '/=> \// { print $3 } /^[ \t]*\// { print $1 }'); do
		[[ -e $r$lib ]] && continue
		grep -qxF "$lib" "$skip" && continue
		mkdir -p "$(dirname "$r$lib")"
		cp -L "$lib" "$r$lib"
	done
}

# part NAME FILL INPUT...: .cache/v2/NAME.cpio, made by the function FILL in an
# empty tree ($1), rebuilt only when the INPUT files (or this script) changed.
part() {
	local name=$1 fill=$2 stamp out="$V2/$1.cpio"
	shift 2
	stamp=$(stat -L -c '%n %s %Y' "$@" "$HERE/setup.sh" | sha256sum | cut -d' ' -f1)
	[[ -s $out && -f $V2/$name.stamp && $(<"$V2/$name.stamp") == "$stamp" ]] && return 0
	note "building ${out#"$REPO"/}"
	TMPD=$(mktemp -d "$V2/.tmp.XXXXXX")
	mkdir "$TMPD/root"
	"$fill" "$TMPD/root"
	(cd "$TMPD/root" && find . -mindepth 1 | LC_ALL=C sort | /bin/busybox cpio -o -H newc >"$TMPD/out.cpio" 2>>"$LOG") ||
		die "cpio of $name failed"
	mv "$TMPD/out.cpio" "$out"
	printf '%s\n' "$stamp" >"$V2/$name.stamp"
	rm -rf "$TMPD"
	TMPD=""
}

# The base: busybox, /init, runc and the libraries, the container rootfs.
fill_base() {
	local r=$1 a lib
	mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,lib/x86_64-linux-gnu,lib64,etc,proc,sys,dev,run,tmp,root,newroot,var/lib/containerd,usr/local/containerd,payload}
	chmod 1777 "$r/tmp"
	ln -s ../run "$r/var/run"
	mknod -m 600 "$r/dev/console" c 5 1 2>/dev/null || true
	mknod -m 666 "$r/dev/null" c 1 3 2>/dev/null || true
	cp /bin/busybox "$r/bin/busybox"
	for a in $(/bin/busybox --list); do
		[[ $a == busybox ]] || ln -s busybox "$r/bin/$a"
	done
	install -m 0755 "$HERE/guest-init.sh" "$r/init"
	copy_bin "$r" /usr/sbin/runc /usr/sbin/runc
	# The oomguard shim (a Rust binary) needs these too; they ride in the base
	# so the payload usually only carries the shim itself.
	for lib in /lib/x86_64-linux-gnu/libc.so.6 /lib64/ld-linux-x86-64.so.2 \
		/lib/x86_64-linux-gnu/libgcc_s.so.1 /lib/x86_64-linux-gnu/libm.so.6; do
		[[ -e $lib && ! -e $r$lib ]] && cp -L "$lib" "$r$lib"
	done
	cp -a "$ROOTFS" "$r/rootfs"
	printf 'root:x:0:0:root:/root:/bin/sh\n' >"$r/etc/passwd"
	printf 'root:x:0:\n' >"$r/etc/group"
	: >"$r/etc/resolv.conf"
	printf '127.0.0.1\tlocalhost\n' >"$r/etc/hosts"
	(cd "$r" && find lib lib64 -type f | sed 's#^#/#') >"$V2/base.libs"
}
part base fill_base /bin/busybox /usr/sbin/runc "$HERE/guest-init.sh" "$ROOTFS/.oomguard-rootfs"

# One part per containerd version (only the one a run uses is appended: every
# MB costs the guest ~15 ms of TCG time to unpack).
for ver in 1.7 2; do
	fill_containerd() {
		local r=$1 b
		for b in containerd ctr containerd-shim-runc-v2; do
			copy_bin "$r" "$CACHE/containerd/$ver/bin/$b" "/usr/local/containerd/$ver/bin/$b" "$V2/base.libs"
		done
		cp "$CACHE/containerd/$ver/PACKAGES" "$r/usr/local/containerd/$ver/PACKAGES"
	}
	inputs=("$CACHE/containerd/$ver/PACKAGES" "$V2/base.libs")
	for b in containerd ctr containerd-shim-runc-v2; do
		inputs+=("$(readlink -f "$CACHE/containerd/$ver/bin/$b")")
	done
	part "containerd-$ver" fill_containerd "${inputs[@]}"
done

if ((print)); then
	printf 'KERNEL=%s\nKERNEL_VERSION=%s\nBASE=%s\nCONTAINERD_1_7=%s\nCONTAINERD_2=%s\nQEMU=%s\n' \
		"$KDIR/vmlinux" "$(<"$KDIR/version")" "$V2/base.cpio" "$V2/containerd-1.7.cpio" "$V2/containerd-2.cpio" \
		"$(command -v qemu-system-x86_64)"
fi
