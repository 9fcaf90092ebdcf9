"""What huggingface_hub's local cache holds of a repo that lacks the files asked for.

Offline, or with the Hub out of reach, a repo id the cache does not have and one it has
without model files (a tokenizer-only repo) were told apart by nothing: both read "none of
[...] found in the local Hugging Face cache" (trial BE). The cache is read as huggingface_hub
lays it out (`HF_HUB_CACHE/models--ORG--NAME/snapshots/<commit>/`).
"""

from __future__ import annotations

import difflib
import os

# At most this many of a cached snapshot's file names, or of the close repo names, are listed.
MAX_LISTED = 8


def cached_hint(repo_id: str, revision: str | None = None) -> str:
    """" (the cache's copy holds only: a.json, b.txt)" (files whose blob is gone, a link to
    nothing, named as such), for a repo cached at other revisions than the one asked " (the
    cache holds it at: main, v2)", for a ref whose snapshot is gone or snapshots no ref names
    what there is, for a repo the cache lacks " (cached repos with close names: org/name)",
    or "" where none applies."""
    from huggingface_hub import constants, errors, snapshot_download

    repo = os.path.join(constants.HF_HUB_CACHE, "models--" + repo_id.replace("/", "--"))
    empty = _empty_ref_hint(repo, revision or "main")
    if empty:  # huggingface_hub takes the whole snapshots/ folder for its snapshot then
        return empty
    try:
        folder = snapshot_download(repo_id, revision=revision, local_files_only=True)
    except (errors.LocalEntryNotFoundError, ValueError, OSError):  # not cached at that revision
        folder = None
    if folder is not None:
        return _snapshot_hint(repo_id, folder)
    if os.path.isdir(repo):  # cached, at other revisions (a commit hash is its own name)
        return _revisions_hint(repo, revision or "main")
    try:
        cached = [name.removeprefix("models--").replace("--", "/")
                  for name in os.listdir(constants.HF_HUB_CACHE) if name.startswith("models--")]
    except OSError:
        return ""
    close = difflib.get_close_matches(repo_id, cached, n=MAX_LISTED, cutoff=0.8)
    return f" (cached repos with close names: {', '.join(close)})" if close else ""


def _snapshot_hint(repo_id: str, folder: str) -> str:
    """What a cached snapshot holds; its links whose blob was removed (a cleaned `blobs/`, a
    copied `snapshots/`) are named apart: listed as held, they read as the file not found."""
    held, gone = [], []
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            (held if os.path.exists(path) else gone).append(os.path.relpath(path, folder))
    held.sort()
    gone.sort()
    hint = f" (the cache's copy holds only: {_listed(held) or 'no files'}"
    if gone:
        hint += (f"; {_listed(gone)} {'are links' if len(gone) > 1 else 'is a link'} to a "
                 f"removed blob: download again with `hf download {repo_id}`")
    return hint + ")"


def _empty_ref_hint(repo: str, asked: str) -> str:
    """For a ref file `refs/<asked>` of the cached `repo` that names no commit (empty, or
    blanks: a download cut off while writing it): says so, with the cached commits to pass
    as `revision=`; '' otherwise. Its snapshot was read as the whole `snapshots/` folder,
    and every cached commit's files were listed as what the cache held."""
    ref = os.path.join(repo, "refs", asked)
    try:
        with open(ref, encoding="utf-8") as f:
            if f.read().strip():
                return ""
    except (OSError, UnicodeDecodeError):
        return ""
    snapshots = os.path.join(repo, "snapshots")
    commits = sorted(os.listdir(snapshots)) if os.path.isdir(snapshots) else []
    others = f", or pass a cached commit as revision=: {_listed(commits)}" if commits else ""
    return (f" (its refs/{asked} is empty, naming no commit: download it again{others})")


def _revisions_hint(repo: str, asked: str) -> str:
    """For a cached repo without a snapshot at `asked`: the ref naming a commit whose snapshot
    is gone (with the cached commits to pass as `revision` instead), or written with a
    trailing newline huggingface_hub reads as part of the commit; else the refs it is held
    at; else the commits of snapshots no ref names (a download by commit hash)."""
    refs, snapshots = os.path.join(repo, "refs"), os.path.join(repo, "snapshots")
    named = sorted(os.listdir(refs)) if os.path.isdir(refs) else []
    commits = sorted(os.listdir(snapshots)) if os.path.isdir(snapshots) else []
    ref = os.path.join(refs, asked)
    if asked in named and os.path.isfile(ref):
        with open(ref, encoding="utf-8") as f:
            written = f.read()
        commit = written.strip()
        if commit in commits:  # huggingface_hub looks for the folder named as written
            return (f" (its refs/{asked} holds commit {commit[:12]} with a line break or "
                    f"spaces around it, which huggingface_hub reads as part of its name: "
                    f"write it bare, e.g. printf %s {commit} > {ref})")
        others = (f", or pass a cached commit as revision=: {_listed(commits)}" if commits
                  else "")
        return (f" (its refs/{asked} names commit {commit[:12]}, whose snapshot folder is "
                f"missing from the cache: download it again{others})")
    if named:
        return f" (the cache holds it at: {_listed(named)})"
    if commits:
        return (f" (the cache holds snapshots of commit{'s' * (len(commits) > 1)} "
                f"{_listed(commits)}, named by no ref: pass the commit as revision=)")
    return ""


def _listed(names: list[str]) -> str:
    more = len(names) - MAX_LISTED
    return ", ".join(names[:MAX_LISTED]) + (f" and {more} more" if more > 0 else "")
