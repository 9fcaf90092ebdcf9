"""Released CLIP weights by name, and Hugging Face Hub repositories, through `huggingface_hub`.

Every download goes through `huggingface_hub.hf_hub_download`, so its cache (`HF_HOME`,
`HF_HUB_CACHE`), offline mode (`HF_HUB_OFFLINE=1`), revisions and tokens (`HF_TOKEN`, `hf auth
login`) apply unchanged. A Hub file stored with Git LFS is checked against the SHA-256 the Hub
publishes for it (its cache blob is named by that hash).

`PRETRAINED` names each checkpoint as open_clip does (`list_pretrained()`:
`("ViT-B-32", "openai")`, ...) and points at the same Hub copy open_clip downloads
(`open_clip.get_pretrained_cfg(name, tag)["hf_hub"]`): OpenAI's releases as re-hosted by timm
(`timm/*.openai`; OpenAI's original URLs carry the SHA-256 of the TorchScript `.pt` files,
recorded here as `openai_sha256` and checked when such a file is passed as `pretrained=`), and
LAION's models from the `laion` organisation.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import logging
import os
import re
import time
from pathlib import Path
from typing import Sequence

from clip_jax.errors import ConfigError, MissingFileError
from clip_jax.models.config import OPENAI_IMAGE_MEAN, OPENAI_IMAGE_STD
from clip_jax.models.presets import openai_spelling
from clip_jax.pretrained.cached import cached_hint

log = logging.getLogger(__name__)

# How long the Hub, once found out of reach, is not asked again: each file asked for costs
# huggingface_hub's retries (about 25 s), and a cached repo of eight files took over three
# minutes to load with the network down (trial BE). Meanwhile files come from the cache alone.
UNREACHABLE_SECONDS = 300.0
# Hub endpoint -> (monotonic time until which it is not asked, the error that said so).
_unreachable: dict[str, tuple[float, Exception]] = {}

OPEN_CLIP_PREFIX = "hf-hub:"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_LFS_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """One released checkpoint: where its weights live and what weights cannot say."""

    hf_hub: str
    quick_gelu: bool
    image_mean: tuple[float, float, float] = OPENAI_IMAGE_MEAN
    image_std: tuple[float, float, float] = OPENAI_IMAGE_STD
    openai_url: str | None = None  # OpenAI's original file; its path holds the file's SHA-256

    @property
    def openai_sha256(self) -> str | None:
        return None if self.openai_url is None else self.openai_url.split("/")[-2]


def _openai(repo: str, sha256: str, filename: str) -> Pretrained:
    return Pretrained(f"timm/{repo}.openai", True, openai_url=(
        f"https://openaipublic.azureedge.net/clip/models/{sha256}/{filename}"))


PRETRAINED: dict[tuple[str, str], Pretrained] = {
    ("RN50", "openai"): _openai(
        "resnet50_clip", "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762",
        "RN50.pt"),
    ("RN101", "openai"): _openai(
        "resnet101_clip", "8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599",
        "RN101.pt"),
    ("RN50x4", "openai"): _openai(
        "resnet50x4_clip", "7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd",
        "RN50x4.pt"),
    ("RN50x16", "openai"): _openai(
        "resnet50x16_clip", "52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa",
        "RN50x16.pt"),
    ("RN50x64", "openai"): _openai(
        "resnet50x64_clip", "be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c",
        "RN50x64.pt"),
    ("ViT-B-32", "openai"): _openai(
        "vit_base_patch32_clip_224",
        "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af", "ViT-B-32.pt"),
    ("ViT-B-16", "openai"): _openai(
        "vit_base_patch16_clip_224",
        "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f", "ViT-B-16.pt"),
    ("ViT-L-14", "openai"): _openai(
        "vit_large_patch14_clip_224",
        "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836", "ViT-L-14.pt"),
    ("ViT-L-14-336", "openai"): _openai(
        "vit_large_patch14_clip_336",
        "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02", "ViT-L-14-336px.pt"),
    ("ViT-B-32", "laion2b_s34b_b79k"): Pretrained("laion/CLIP-ViT-B-32-laion2B-s34B-b79K", False),
    ("ViT-B-16", "laion2b_s34b_b88k"): Pretrained("laion/CLIP-ViT-B-16-laion2B-s34B-b88K", False),
    ("ViT-L-14", "laion2b_s32b_b82k"): Pretrained(
        "laion/CLIP-ViT-L-14-laion2B-s32B-b82K", False, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ("ViT-H-14", "laion2b_s32b_b79k"): Pretrained("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", False),
    ("ViT-g-14", "laion2b_s34b_b88k"): Pretrained("laion/CLIP-ViT-g-14-laion2B-s34B-b88K", False),
    ("ViT-bigG-14", "laion2b_s39b_b160k"): Pretrained(
        "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k", False),
}


def list_pretrained(as_str: bool = False) -> list[tuple[str, str]] | list[str]:
    """`(name, tag)` of every checkpoint `clip_jax.load(name, tag)` fetches (open_clip's
    spelling; `as_str` gives `"name:tag"`, also accepted by `load` and `config.init_from`)."""
    return [f"{n}:{t}" if as_str else (n, t) for n, t in PRETRAINED]


def base_name(name: str) -> str:
    """The registry's spelling of a model name: `ViT-B/32`, `ViT-B-32-quickgelu` -> `ViT-B-32`,
    `ViT-L/14@336px` (OpenAI's) and `ViT-L/14@336` -> `ViT-L-14-336`."""
    return openai_spelling(name.removesuffix("-quickgelu")).replace("/", "-").replace("@", "-")


def lookup(name: str, tag: str) -> tuple[str, Pretrained]:
    """The registry's `(name, entry)` for any spelling of the name (`ViT-B/32`, `ViT-B-32`,
    `ViT-B-32-quickgelu`); ConfigError listing the known tags otherwise."""
    base = base_name(name)
    if (base, tag) not in PRETRAINED:
        tags = sorted(t for n, t in PRETRAINED if n == base)
        known = f"tags for {base}: {tags}" if tags else (
            f"names: {sorted({n for n, _ in PRETRAINED})}")
        raise ConfigError(f"No pretrained weights {name!r} / {tag!r}; known {known} "
                          "(clip_jax.list_pretrained()); as the model itself, a Hub repo id or a "
                          "local path works too.")
    return base, PRETRAINED[(base, tag)]


def open_clip_config_file(name: str) -> str | None:
    """The installed open_clip's model config of architecture `name` (its
    `model_configs/<name>.json`, e.g. `ViT-B-16-plus-240`), which `model=` takes as a path;
    None without open_clip or such a file. open_clip is located, not imported (torch)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations or "/" in name or not name.strip():
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "model_configs",
                        f"{name.strip()}.json")
    return path if os.path.isfile(path) else None


def split_name(spec: str) -> tuple[str, str] | None:
    """`"ViT-B-32:openai"` -> `("ViT-B-32", "openai")` when the name before the colon is a
    registry architecture (a mistyped tag then meets `lookup`'s list of the known ones)."""
    if spec.startswith(OPEN_CLIP_PREFIX) or ":" not in spec:
        return None
    name, tag = spec.rsplit(":", 1)
    return (name, tag) if any(n == base_name(name) for n, _ in PRETRAINED) else None


def is_repo_id(spec: str) -> bool:
    """`org/name` (a Hub repo) or `hf-hub:org/name` (open_clip's spelling). A bare `org/name`
    whose `org` is a folder here (`runs/my_run` beside `runs/`) is a local path instead: a
    typo in it must not send the lookup to the Hub (a minute of retries offline)."""
    if spec.startswith(OPEN_CLIP_PREFIX):
        return bool(_REPO_ID.match(spec.removeprefix(OPEN_CLIP_PREFIX)))
    return bool(_REPO_ID.match(spec)) and not os.path.isdir(spec.split("/")[0])


def shadowed_repo_hint(spec: str) -> str:
    """' (...)' saying the Hub repo `spec` names was not tried because its `org` is a local
    folder (`is_repo_id`), or '' when that is not so."""
    org = spec.split("/")[0]
    if not _REPO_ID.match(spec) or not os.path.isdir(org):
        return ""
    return (f" (the Hub repo {spec!r} is not tried while {org}/ is a folder here: run from "
            "another directory to load it from the Hub)")


def download(repo_id: str, filenames: Sequence[str], *, revision: str | None = None,
             token: str | bool | None = None, optional: bool = False) -> Path | None:
    """The local path of the first of `filenames` the repo has, fetched into (or found in)
    huggingface_hub's cache. None of them to be had: None if `optional` (a processor or
    tokenizer file loading goes on without), else MissingFileError from `not_found`."""
    path, unreachable = fetch(repo_id, filenames, revision=revision, token=token)
    if path is not None or optional:
        return path
    raise not_found(repo_id, filenames, revision, unreachable)


def fetch(repo_id: str, filenames: Sequence[str], *, revision: str | None = None,
          token: str | bool | None = None) -> tuple[Path | None, Exception | None]:
    """`(path, unreachable)`: the local path of the first of `filenames` the repo has (else
    None), and the error that kept the Hub out of reach if one did (None when it answered, or
    offline by HF_HUB_OFFLINE).

    With the Hub out of reach, the cache answers: a file not cached is passed over for the next
    of `filenames`, as transformers does offline. A cached transformers repo without
    `preprocessor_config.json` (transformers 5 writes `processor_config.json`) failed to load
    so, though complete. Once the Hub is found out of reach, it is not asked again for
    `UNREACHABLE_SECONDS` (one warning says so): the files come from the cache alone.
    Raises MissingFileError for a repo or revision the Hub says is not there."""
    from huggingface_hub import constants, errors, hf_hub_download

    unreachable: Exception | None = None
    for filename in filenames:
        down = _out_of_reach(constants.ENDPOINT)
        try:
            path = hf_hub_download(repo_id, filename, revision=revision, token=token,
                                   library_name="clip_jax", local_files_only=down is not None)
        except errors.LocalEntryNotFoundError as e:  # offline, or the Hub out of reach
            if not constants.is_offline_mode():
                unreachable = down or _found_out_of_reach(constants.ENDPOINT, e)
            continue  # not in the cache: the next name, else `not_found` says so
        except errors.EntryNotFoundError:  # not in the repo
            continue
        except errors.RepositoryNotFoundError as e:
            raise MissingFileError(f"No Hub repository {repo_id!r} (or it is private: log in "
                                   "with `hf auth login` or set HF_TOKEN).") from e
        except errors.RevisionNotFoundError as e:
            raise MissingFileError(f"Hub repository {repo_id!r} has no revision "
                                   f"{revision!r}.") from e
        verify_lfs_sha256(path)
        return Path(path), None
    return None, unreachable


def _out_of_reach(endpoint: str) -> Exception | None:
    """The error that found `endpoint` out of reach in the last `UNREACHABLE_SECONDS`, or None."""
    until, error = _unreachable.get(endpoint, (0.0, None))
    return error if time.monotonic() < until else None


def _found_out_of_reach(endpoint: str, error: Exception) -> Exception:
    """Records `endpoint` as out of reach (`error`), with one warning; returns `error`."""
    _unreachable[endpoint] = (time.monotonic() + UNREACHABLE_SECONDS, error)
    log.warning("The Hugging Face Hub (%s) is out of reach (%s): for the next %.0f minutes "
                "this process reads files from the local cache alone, without asking it again; "
                "set HF_HUB_OFFLINE=1 to skip the wait altogether (in every process).", endpoint,
                _first_line(error.__cause__ or error), UNREACHABLE_SECONDS / 60)
    return error


def not_found(repo_id: str, filenames: Sequence[str], revision: str | None = None,
              unreachable: Exception | None = None) -> MissingFileError:
    """The error for a repo (at `revision`) none of `filenames` was had from, saying where it
    looked (offline: only huggingface_hub's local cache), or that the Hub could not be reached
    (`unreachable`, from `fetch`) and the cache lacks them."""
    from huggingface_hub import constants

    if unreachable is not None:
        error = MissingFileError(
            f"Could not reach the Hugging Face Hub for {repo_id!r} "
            f"({_first_line(unreachable.__cause__ or unreachable)}) and none of "
            f"{list(filenames)} is in the local cache{cached_hint(repo_id, revision)}; check "
            "the connection (HF_ENDPOINT, proxies), or set HF_HUB_OFFLINE=1 to load only "
            "cached files.")
        error.__cause__ = unreachable
        return error
    offline = constants.is_offline_mode()
    where = ("the local Hugging Face cache (HF_HUB_OFFLINE is set; unset it or download the "
             "repo there first)" if offline else "the repository")
    at = f" at revision {revision!r}" if revision else ""
    hint = cached_hint(repo_id, revision) if offline else ""
    return MissingFileError(f"{repo_id!r}{at}: none of {list(filenames)} found in {where}"
                            f"{hint}.")


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]


def verify_lfs_sha256(path: str) -> None:
    """Checks a cached Hub file against the SHA-256 its blob is named by (Git LFS files only;
    huggingface_hub names a blob by the Hub's ETag, the SHA-256 for LFS files). Once per
    process per blob as it is now (its name, size and modification time): hashing reads the
    whole file (about 1 s/GB), and a snapshot's link may come to point at another blob."""
    blob = os.path.realpath(path)
    stat = os.stat(blob)
    _verify_blob(path, blob, stat.st_size, stat.st_mtime_ns)


@functools.cache
def _verify_blob(path: str, blob: str, size: int, mtime_ns: int) -> None:
    expected = os.path.basename(blob)
    if not _LFS_SHA256.match(expected):
        return
    digest = file_sha256(blob)
    if digest != expected:
        raise ConfigError(f"{path} is corrupt: SHA-256 {digest} but the Hub published {expected}; "
                          f"delete {blob} and load again.")


def file_sha256(path: str | os.PathLike) -> str:
    """The hex SHA-256 of the file at `path`, read in 16 MiB chunks (a ViT-L file is ~1.7 GB):
    what OpenAI's download URLs embed to check a file."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            sha.update(chunk)
    return sha.hexdigest()


def check_openai_file(path: str | os.PathLike, entry: Pretrained) -> None:
    """A local copy of OpenAI's released `.pt` must hash to the SHA-256 in its URL."""
    if entry.openai_sha256 is None:
        return
    digest = file_sha256(path)
    if digest != entry.openai_sha256:
        raise ConfigError(f"{path} is not OpenAI's released {entry.openai_url.split('/')[-1]} "
                          f"(SHA-256 {digest}, published {entry.openai_sha256}); load a "
                          "fine-tuned file with clip_jax.load(path) instead.")
