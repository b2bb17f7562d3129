#!/usr/bin/env python3
"""Write oomguard's installer image as an OCI image archive, reproducibly.

usage: oci.py BINARY VERSION NAME OUT.tar

The archive holds one layer (BINARY at /usr/local/bin/containerd-shim-oomguard-v2),
an OCI layout (oci-layout, index.json, blobs/sha256/) that `ctr images import`
reads, and a manifest.json that `docker load` reads. Everything that could
differ between two runs is fixed: file order, owners, modes, times (from
SOURCE_DATE_EPOCH, 0 when unset), gzip's header, JSON key order. Same inputs,
same bytes, same digests.
"""

import datetime
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile

SHIM_PATH = "usr/local/bin/containerd-shim-oomguard-v2"


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def tar_bytes(entries, mtime):
    """entries: (path, mode, data or None for a directory), in order."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, mode, data in entries:
            info = tarfile.TarInfo(path)
            info.mode, info.mtime = mode, mtime
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def main(argv):
    if len(argv) != 5:
        sys.exit(__doc__.strip().splitlines()[2])
    binary, version, name, out_path = argv[1:]
    try:
        epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    except ValueError:
        sys.exit("oci.py: SOURCE_DATE_EPOCH is not a number of seconds: "
                 + os.environ["SOURCE_DATE_EPOCH"])
    with open(binary, "rb") as f:
        shim = f.read()

    layer_tar = tar_bytes(
        [("usr", 0o755, None), ("usr/local", 0o755, None),
         ("usr/local/bin", 0o755, None), (SHIM_PATH, 0o755, shim)],
        epoch)
    layer_gz = gzip.compress(layer_tar, compresslevel=9, mtime=0)
    blobs = {}

    def blob(data):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return digest

    created = datetime.datetime.fromtimestamp(
        epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    labels = {
        "org.opencontainers.image.title": "oomguard installer",
        "org.opencontainers.image.version": version,
    }
    config = canonical({
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {
            "Entrypoint": ["/" + SHIM_PATH],
            # The node installer (deploy/daemonset.yaml says it again).
            "Cmd": ["install", "--host-root", "/host", "--wait"],
            "Env": ["PATH=/usr/local/bin"],
            "Labels": labels,
        },
        "rootfs": {
            "type": "layers",
            "diff_ids": ["sha256:" + hashlib.sha256(layer_tar).hexdigest()],
        },
        "history": [{"created": created, "created_by": "hack/image.sh"}],
    })
    config_digest = blob(config)
    layer_digest = blob(layer_gz)
    manifest = canonical({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest, "size": len(layer_gz)}],
        "annotations": labels,
    })
    manifest_digest = blob(manifest)
    repo, _, tag = name.rpartition(":")
    if not repo or "/" in tag:
        sys.exit(f"oci.py: image name {name!r} has no tag (NAME:TAG)")
    index = canonical({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": len(manifest),
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    })
    docker_manifest = canonical([{
        "Config": "blobs/sha256/" + config_digest[7:],
        "RepoTags": [name],
        "Layers": ["blobs/sha256/" + layer_digest[7:]],
    }])

    entries = [("blobs", 0o755, None), ("blobs/sha256", 0o755, None)]
    entries += [("blobs/sha256/" + d[7:], 0o644, blobs[d]) for d in sorted(blobs)]
    entries += [("index.json", 0o644, index),
                ("manifest.json", 0o644, docker_manifest),
                ("oci-layout", 0o644, canonical({"imageLayoutVersion": "1.0.0"}))]
    tmp = out_path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(tar_bytes(entries, epoch))
    os.replace(tmp, out_path)
    print(manifest_digest)


if __name__ == "__main__":
    main(sys.argv)
