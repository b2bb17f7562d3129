#!/usr/bin/env bash
# What the CRI tests need besides hack/deps.sh: CNI plugins and two images.
#
# usage: hack/cri/setup.sh
#
#   apt (bookworm)  containernetworking-plugins (CNI plugins in /usr/lib/cni),
#                   installed only when missing
#   .cache/cri/pause       hack/cri/pause.c, built static (gcc -static)
#   .cache/cri/pause.oci.tar    OCI image archive localhost/oomguard/pause:1
#                               (entrypoint /pause): the CRI sandbox image
#   .cache/cri/busybox.oci.tar  OCI image archive localhost/oomguard/busybox:1
#                               (hack/rootfs.sh's busybox, PATH set, cmd sh)
#
# No registry is involved: hack/cri/containerd.sh imports both archives with
# "ctr -n k8s.io images import". The archives are rebuilt when their inputs
# are newer. Idempotent; prints nothing when it succeeds.
set -euo pipefail
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

case ${1:-} in
-h | --help)
	sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
	exit 0
	;;
"") ;;
*) die "unknown argument '$1' (see --help)" ;;
esac
need_root

OUT="$CACHE/cri"
LOG="$CACHE/logs/cri-setup.log"
mkdir -p "$OUT" "$CACHE/logs"

# One at a time (tests may call it concurrently).
exec 8>"$OUT/.setup.lock"
flock -w 600 8 || die "timed out waiting for the lock $OUT/.setup.lock"

apt_install containernetworking-plugins
for p in bridge host-local loopback; do
	[[ -x /usr/lib/cni/$p ]] || die "/usr/lib/cni/$p is missing (containernetworking-plugins)"
done
command -v jq >/dev/null || die "jq is missing: run hack/deps.sh"

SRC="$REPO/hack/cri/pause.c"
if [[ ! -x $OUT/pause || $SRC -nt $OUT/pause ]]; then
	command -v gcc >/dev/null || die "gcc is needed to build $SRC"
	gcc -static -Os -s -o "$OUT/pause.new" "$SRC" || die "could not build $SRC (needs gcc and libc6-dev)"
	mv -f "$OUT/pause.new" "$OUT/pause"
fi

sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }

# oci_archive NAME TAG ROOTFS_DIR CONFIG_JSON OUT: a one-layer OCI image
# layout in a tar, named NAME:TAG for "ctr images import".
oci_archive() {
	local name=$1 tag=$2 root=$3 cfg=$4 out=$5 t
	t=$(mktemp -d "$OUT/.build.XXXXXX")
	mkdir -p "$t/blobs/sha256"
	tar -C "$root" --sort=name --mtime=@0 --numeric-owner --owner=0 --group=0 \
		--exclude=./.oomguard-rootfs -cf "$t/layer.tar" .
	local layer_sha layer_size
	layer_sha=$(sha "$t/layer.tar")
	layer_size=$(size "$t/layer.tar")
	mv "$t/layer.tar" "$t/blobs/sha256/$layer_sha"
	jq -cnj --arg diff "sha256:$layer_sha" --argjson c "$cfg" \
		'{architecture: "amd64", os: "linux", config: $c, rootfs: {type: "layers", diff_ids: [$diff]}}' >"$t/config.json"
	local cfg_sha cfg_size
	cfg_sha=$(sha "$t/config.json")
	cfg_size=$(size "$t/config.json")
	mv "$t/config.json" "$t/blobs/sha256/$cfg_sha"
	jq -cnj --arg c "sha256:$cfg_sha" --argjson cs "$cfg_size" --arg l "sha256:$layer_sha" --argjson ls "$layer_size" \
		'{schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
		  config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $c, size: $cs},
		  layers: [{mediaType: "application/vnd.oci.image.layer.v1.tar", digest: $l, size: $ls}]}' >"$t/manifest.json"
	local m_sha m_size
	m_sha=$(sha "$t/manifest.json")
	m_size=$(size "$t/manifest.json")
	mv "$t/manifest.json" "$t/blobs/sha256/$m_sha"
	jq -cnj --arg m "sha256:$m_sha" --argjson ms "$m_size" --arg name "$name:$tag" --arg tag "$tag" \
		'{schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json",
		  manifests: [{mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $m, size: $ms,
		    platform: {architecture: "amd64", os: "linux"},
		    annotations: {"io.containerd.image.name": $name, "org.opencontainers.image.ref.name": $tag}}]}' >"$t/index.json"
	printf '{"imageLayoutVersion":"1.0.0"}' >"$t/oci-layout"
	tar -C "$t" --sort=name --mtime=@0 --numeric-owner --owner=0 --group=0 -cf "$out.new" oci-layout index.json blobs
	mv -f "$out.new" "$out"
	rm -rf "$t"
}

if [[ ! -s $OUT/pause.oci.tar || $OUT/pause -nt $OUT/pause.oci.tar || $0 -nt $OUT/pause.oci.tar ]]; then
	root=$(mktemp -d "$OUT/.pause-root.XXXXXX")
	install -m 0755 "$OUT/pause" "$root/pause"
	mkdir -p "$root"/{dev,proc,sys,etc}
	chmod 0755 "$root"
	oci_archive localhost/oomguard/pause 1 "$root" '{"Entrypoint": ["/pause"]}' "$OUT/pause.oci.tar"
	rm -rf "$root"
fi

rootfs=$("$REPO/hack/rootfs.sh")
if [[ ! -s $OUT/busybox.oci.tar || $rootfs/.oomguard-rootfs -nt $OUT/busybox.oci.tar || $0 -nt $OUT/busybox.oci.tar ]]; then
	oci_archive localhost/oomguard/busybox 1 "$rootfs" \
		'{"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["/bin/sh"]}' \
		"$OUT/busybox.oci.tar"
fi
