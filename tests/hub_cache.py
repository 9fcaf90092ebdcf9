"""A Hugging Face Hub cache written exactly as huggingface_hub lays it out, for offline tests.

`$HF_HUB_CACHE/models--ORG--NAME/{blobs/<etag>, snapshots/<commit>/<file> -> ../../blobs/<etag>,
refs/main}`; the ETag of a Git LFS file (weights) is its SHA-256, of a regular git file
(configs) its git blob SHA-1. The tests check the layout independently: open_clip and
transformers load the same repos from it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".npz", ".msgpack", ".h5")


def etag(path: Path) -> str:
    data = path.read_bytes()
    if path.name.endswith(LFS_SUFFIXES):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def add_repo(cache: Path, repo_id: str, files: dict[str, Path], revision: str = "main") -> Path:
    """Copies `files` (repo filename -> local file) into the cache as one commit of `repo_id`;
    returns the snapshot directory."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(repr(sorted((n, etag(p)) for n, p in files.items())).encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    for name, source in files.items():
        blob = repo / "blobs" / etag(source)
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, blob)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return snapshot
