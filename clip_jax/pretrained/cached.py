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
    """" (the cache's copy holds only: a.json, b.txt)", for a repo cached at other revisions
    than the one asked " (the cache holds it at: main, v2)", for a repo the cache lacks
    " (cached repos with close names: org/name)", or "" where none applies."""
    from huggingface_hub import constants, errors, snapshot_download

    try:
        folder = snapshot_download(repo_id, revision=revision, local_files_only=True)
    except (errors.LocalEntryNotFoundError, ValueError, OSError):  # not cached at that revision
        folder = None
    if folder is not None:
        files = sorted(os.path.relpath(os.path.join(root, name), folder)
                       for root, _, names in os.walk(folder) for name in names)
        return f" (the cache's copy holds only: {_listed(files) or 'no files'})"
    refs = os.path.join(constants.HF_HUB_CACHE, "models--" + repo_id.replace("/", "--"), "refs")
    if os.path.isdir(refs):  # cached, at other revisions (a commit hash is its own name)
        held = sorted(os.listdir(refs))
        return f" (the cache holds it at: {_listed(held)})" if held else ""
    try:
        cached = [name.removeprefix("models--").replace("--", "/")
                  for name in os.listdir(constants.HF_HUB_CACHE) if name.startswith("models--")]
    except OSError:
        return ""
    close = difflib.get_close_matches(repo_id, cached, n=MAX_LISTED, cutoff=0.8)
    return f" (cached repos with close names: {', '.join(close)})" if close else ""


def _listed(names: list[str]) -> str:
    more = len(names) - MAX_LISTED
    return ", ".join(names[:MAX_LISTED]) + (f" and {more} more" if more > 0 else "")
