#!/usr/bin/env bash
# Make a container root filesystem from busybox.
#
# usage: hack/rootfs.sh [--dynamic] [DIR]
#
#   default      busybox-static (/bin/busybox of the busybox-static package);
#                DIR defaults to .cache/rootfs/busybox
#   --dynamic    the dynamic busybox unpacked by hack/deps.sh (.cache/busybox-dyn)
#                plus the host's libc and loader copied in; its shell execs
#                /bin/X for every command instead of running applets in-process.
#                DIR defaults to .cache/rootfs/busybox-dyn
#
# The result has /bin/busybox and a symlink per applet in /bin (/sbin, /usr/bin
# and /usr/sbin are symlinks to /bin), /proc /sys /dev /tmp /run /root /var/tmp,
# and /etc with passwd/group (root, nobody), hosts, hostname, resolv.conf.
# Idempotent: a DIR built from the same busybox is left as it is. Prints the
# absolute path of DIR.
set -euo pipefail
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

dynamic=0
dir=""
for arg in "$@"; do
	case $arg in
	--dynamic) dynamic=1 ;;
	-h | --help)
		sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
		exit 0
		;;
	-*) die "unknown option '$arg' (see --help)" ;;
	*)
		[[ -z $dir ]] || die "only one DIR may be given"
		dir=$arg
		;;
	esac
done

if ((dynamic)); then
	src="$CACHE/busybox-dyn/bin/busybox"
	[[ -x $src ]] || die "$src is missing: run hack/deps.sh first"
	: "${dir:=$CACHE/rootfs/busybox-dyn}"
else
	src=/bin/busybox
	[[ -x $src ]] || die "$src is missing: run hack/deps.sh (installs busybox-static)"
	if ldd "$src" >/dev/null 2>&1; then
		die "$src is dynamically linked: install busybox-static (hack/deps.sh)"
	fi
	: "${dir:=$CACHE/rootfs/busybox}"
fi

mkdir -p "$dir"
dir=$(cd "$dir" && pwd -P)
[[ $dir != / ]] || die "refusing to build a root filesystem at /"

stamp_version=1
want_stamp="v$stamp_version $( ((dynamic)) && echo dynamic || echo static) $(sha256sum "$src" | cut -d' ' -f1)"
if [[ -f $dir/.oomguard-rootfs && $(<"$dir/.oomguard-rootfs") == "$want_stamp" && -x $dir/bin/busybox ]]; then
	printf '%s\n' "$dir"
	exit 0
fi

rm -f "$dir/.oomguard-rootfs"
mkdir -p "$dir"/{bin,dev,etc,proc,sys,run,root,tmp,var/tmp,home,mnt,usr}
chmod 1777 "$dir/tmp" "$dir/var/tmp"
chmod 700 "$dir/root"
for l in sbin usr/bin usr/sbin; do
	if [[ ! -L $dir/$l ]]; then
		[[ -d $dir/$l ]] && { rmdir "$dir/$l" 2>/dev/null || true; }
		[[ ! -e $dir/$l ]] || die "$dir/$l exists and is not an empty directory"
	fi
	ln -sfn "$( [[ $l == sbin ]] && echo bin || echo ../bin)" "$dir/$l"
done

install -m 0755 "$src" "$dir/bin/busybox.new"
mv -f "$dir/bin/busybox.new" "$dir/bin/busybox"

# Applets: ask the copied binary itself (for the dynamic one, through the
# host's loader, which is the same libc that gets copied below).
applets=$("$src" --list) || die "$src --list failed"
(
	cd "$dir/bin"
	while IFS= read -r a; do
		[[ -n $a && $a != busybox ]] || continue
		[[ -L $a && $(readlink "$a") == busybox ]] && continue
		ln -sfn busybox "$a"
	done <<<"$applets"
)

if ((dynamic)); then
	# Copy the shared objects busybox needs (libc, loader, ...) to the same
	# paths inside the root filesystem.
	libs=$(ldd "$src" | awk '/=> \// { print $3 } /^[ \t]*\// { print $1 }')
	[[ -n $libs ]] || die "ldd found no libraries for $src"
	while IFS= read -r lib; do
		real=$(readlink -f "$lib")
		mkdir -p "$dir$(dirname "$lib")"
		cp -f "$real" "$dir$lib.new"
		mv -f "$dir$lib.new" "$dir$lib"
	done <<<"$libs"
fi

cat >"$dir/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$dir/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
nobody:x:65534:
EOF
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$dir/etc/hosts"
echo oomguard >"$dir/etc/hostname"
: >"$dir/etc/resolv.conf"

printf '%s\n' "$want_stamp" >"$dir/.oomguard-rootfs"
printf '%s\n' "$dir"
