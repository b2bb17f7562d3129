#!/usr/bin/env bash
# Build oomguard's installer image: an OCI image archive that
# `ctr images import` and `docker load` accept, with no base image.
#
# usage: hack/image.sh [--bin BINARY] [OUT_DIR]
#
#   BINARY (default: a static release build, made here with glibc's static
#   libraries into target/static/, since the image has no libc of its own)
#   goes to /usr/local/bin/containerd-shim-oomguard-v2 in one layer. The tag is
#   docker.io/oomguard/installer:VERSION, VERSION what the binary's -v prints.
#   Writes OUT_DIR (default target/image)/oomguard-installer_VERSION.oci.tar and
#   prints its path, then the image's manifest digest.
#   Reproducible: the same binary and SOURCE_DATE_EPOCH (default: the time of
#   the last commit) give the same bytes (hack/image/oci.py fixes order, owners,
#   times and gzip's header).
set -euo pipefail
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

bin_and_out_dir image.sh "$@"
out=$(abs_dir "${out:-$REPO/target/image}")

if [[ -z $bin ]]; then
	# crt-static only for the target: build scripts and proc macros stay
	# dynamic (they cannot be static), hence the explicit --target.
	host=$(rustc -vV | awk '/^host:/ { print $2 }')
	(cd "$REPO" &&
		export RUSTFLAGS="-C target-feature=+crt-static --remap-path-prefix=$REPO=." \
			CARGO_TARGET_DIR="$REPO/target/static" &&
		run_logged "$CACHE/logs/image-build.log" \
			"${CARGO:-cargo}" build --release --target "$host" -p oomguard-shim) ||
		die "static build failed (see $CACHE/logs/image-build.log)"
	bin=$REPO/target/static/$host/release/containerd-shim-oomguard-v2
fi
[[ -x $bin ]] || die "no binary at $bin"
if readelf -l "$bin" | grep -q 'program interpreter'; then
	die "$bin is dynamically linked; the image has no libc: build it with -C target-feature=+crt-static"
fi
version=$("$bin" -v | awk 'NR == 1 { print $2 }')
[[ -n $version ]] || die "$bin -v printed no version"
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || echo 0)}
mkdir -p "$out"
archive=$out/oomguard-installer_$version.oci.tar
digest=$(python3 "$REPO/hack/image/oci.py" "$bin" "$version" "docker.io/oomguard/installer:$version" "$archive") ||
	die "writing $archive failed"
echo "$archive"
echo "$digest"
