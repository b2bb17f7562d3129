#!/usr/bin/env bash
# Build the Debian package oomguard_<version>_amd64.deb with dpkg-deb.
#
# usage: hack/deb.sh [--bin BINARY] [OUT_DIR]
#
#   Packs BINARY (default: target/release/containerd-shim-oomguard-v2, built
#   with "cargo build --release -p oomguard-shim" when missing or older than
#   the sources) into OUT_DIR (default target/deb) and prints the .deb's path:
#     /usr/bin/containerd-shim-oomguard-v2
#     /usr/share/doc/oomguard/README.md, copyright
#     /usr/share/doc/oomguard/docs/      docs/*.md (beside README.md, so its links work)
#     /usr/share/doc/oomguard/examples/  the canonical snippets: containerd-1.x.toml,
#         containerd-2.x.toml, daemon.json, runc.toml, runsc.toml,
#         runsc-network-host.toml, runtimeclasses.yaml (deploy/)
#   The version is what the binary's -v prints. Depends: runc and the shared
#   libraries dpkg-shlibdeps finds (libc6, libgcc-s1); Suggests: runsc.
#   No maintainer scripts: wiring oomguard into containerd or Docker is
#   "containerd-shim-oomguard-v2 install", which the operator runs.
#   The binary is stripped in the package (Debian policy; the release build is
#   already). OOMGUARD_DEB_COMPRESSION: dpkg-deb's -Z (default xz; the test
#   of a debug build uses gzip, ten times faster).
#   Needs dpkg-dev (hack/deps.sh deb installs it).
set -euo pipefail
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

bin_and_out_dir deb.sh "$@"
out=$(abs_dir "${out:-$REPO/target/deb}")

command -v dpkg-shlibdeps >/dev/null || die "dpkg-shlibdeps is missing: run hack/deps.sh deb"
if [[ -z $bin ]]; then
	bin="$REPO/target/release/containerd-shim-oomguard-v2"
	# Cargo knows whether the binary is current; a no-op build takes a second.
	(cd "$REPO" && cargo build --release -q -p oomguard-shim) || die "cargo build --release failed"
fi
[[ -x $bin ]] || die "$bin is not an executable"

version=$("$bin" -v | awk '{ print $2 }')
[[ $version =~ ^[0-9][0-9A-Za-z.+~-]*$ ]] || die "cannot read the version from '$bin -v'"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root="$stage/root"
doc="$root/usr/share/doc/oomguard"
install -d -m 0755 "$root/usr/bin" "$root/DEBIAN" "$doc/examples" "$doc/docs"
install -m 0755 "$bin" "$root/usr/bin/containerd-shim-oomguard-v2"
strip --strip-unneeded "$root/usr/bin/containerd-shim-oomguard-v2" || die "strip failed"
install -m 0644 "$REPO/README.md" "$doc/README.md"
install -m 0644 "$REPO"/docs/*.md "$doc/docs/"
install -m 0644 "$REPO/hack/cri/containerd-1.x.toml" "$REPO/hack/cri/containerd-2.x.toml" \
	"$REPO/hack/docker/daemon.json" "$REPO/hack/cri/oomguard/runc.toml" \
	"$REPO/hack/cri/oomguard/runsc.toml" "$REPO/hack/cri/oomguard/runsc-network-host.toml" \
	"$REPO/deploy/runtimeclasses.yaml" "$doc/examples/"
cat >"$doc/copyright" <<'EOF'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: oomguard

Files: *
Copyright: the oomguard authors
License: Apache-2.0
 On Debian systems the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
EOF
chmod 0644 "$doc/copyright"

# dpkg-shlibdeps reads debian/control in its working directory.
mkdir -p "$stage/src/debian"
printf 'Source: oomguard\n\nPackage: oomguard\nArchitecture: amd64\n' >"$stage/src/debian/control"
shlibs=$(cd "$stage/src" && dpkg-shlibdeps -O -e"$root/usr/bin/containerd-shim-oomguard-v2" 2>/dev/null) ||
	die "dpkg-shlibdeps failed on $bin"
shlibs=${shlibs#shlibs:Depends=}
[[ -n $shlibs ]] || die "dpkg-shlibdeps found no library dependency for $bin"

cat >"$root/DEBIAN/control" <<EOF
Package: oomguard
Version: $version
Architecture: amd64
Maintainer: oomguard developers <root@localhost>
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Depends: runc, $shlibs
Suggests: runsc
Enhances: containerd, docker.io
Section: admin
Priority: optional
Description: containerd shim that reports every OOM kill
 containerd-shim-oomguard-v2 (runtime type io.containerd.oomguard.v2) runs
 containers through runc or gVisor's runsc and tells containerd the truth
 about memory: a TaskOOM event for every OOM kill, before the TaskExit, and
 an exit status that is never 0 for a task that memory killed.
 .
 "containerd-shim-oomguard-v2 install --containerd --docker" adds its runtime
 handlers to containerd's config and Docker's daemon.json (the package itself
 changes neither); example configs are in /usr/share/doc/oomguard/examples.
EOF
(cd "$root" && find usr -type f -exec md5sum {} +) >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/md5sums"

mkdir -p "$out"
deb="$out/oomguard_${version}_amd64.deb"
run_logged "$stage/dpkg-deb.log" dpkg-deb --root-owner-group -Z"${OOMGUARD_DEB_COMPRESSION:-xz}" --build "$root" "$deb.tmp" ||
	die "dpkg-deb failed"
mv -f "$deb.tmp" "$deb"
printf '%s\n' "$deb"
