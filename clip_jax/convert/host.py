"""The host side of every converter: sharded variables gathered to numpy, tensor files, JSON.

Shared by the exporters and importers of `clip_jax.convert` (`hf_export`, `hf_import`,
`open_clip_export`, `open_clip_import`, `openai`), so that gathering, file formats and dtype
names behave alike whatever the format. Dtype names come from `clip_jax.models.config`
(`DTYPES`, `DTYPE_ALIASES`), the one table of them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from jax.experimental import multihost_utils
from safetensors.numpy import load_file, save_file

from clip_jax.errors import ConfigError, MissingFileError
from clip_jax.models.config import canonical_dtype

PathLike = str | os.PathLike


# ----------------------------------------------------------------------------- host gathering

def to_host(array: Any) -> np.ndarray:
    """One tensor in host memory, whatever its sharding; a collective on multi-host runs.

    A sharded array whose shards all live on this process is copied shard by shard; a
    global one is all-gathered for this tensor only, so no device holds more than one full
    tensor at a time. Every process must call this for the same tensors in the same order.
    """
    if isinstance(array, jax.Array) and not array.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return np.asarray(array)


def host_variables(variables: Mapping[str, Any]) -> dict[str, Any]:
    """The (boxed or plain, frozen or not) variable tree as nested dicts of host numpy arrays,
    gathered tensor by tensor."""
    return jax.tree.map(to_host, flax.core.unfreeze(nn.unbox(variables)))


def to_numpy(value: Any) -> np.ndarray:
    """A numpy array of a numpy, jax or torch tensor (torch bfloat16 widened to float32, which
    numpy cannot hold); torch itself is not imported."""
    if hasattr(value, "detach"):  # a torch tensor; torch is optional at runtime
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    return np.asarray(value)


# ----------------------------------------------------------------------------- dtypes

def numpy_dtype(dtype: str) -> np.dtype:
    """The numpy dtype of a stored-weight dtype name (`DTYPES` or a short alias: `bf16`...);
    ConfigError for any other name."""
    return np.dtype(jnp.dtype(canonical_dtype(dtype, "export dtype")))


def is_float(array: np.ndarray) -> bool:
    """Floating point, bfloat16 included (numpy does not count it as `np.floating`)."""
    return np.issubdtype(array.dtype, np.floating) or array.dtype == ml_dtypes.bfloat16


# ----------------------------------------------------------------------------- files

# The stored formats a weights file's bytes show, each with the suffixes that read it.
_FORMATS = {"safetensors": (".safetensors",), "PyTorch": (".pt", ".pth", ".bin"),
            "numpy .npz": (".npz",)}


def _stored_format(path: str, magic: bytes) -> str | None:
    """The `_FORMATS` entry a weights file's bytes (`magic`: its first 64) show: safetensors
    (an 8-byte little-endian header length, then the JSON header's `{`), PyTorch (a protocol-2
    pickle, or a zip holding `data.pkl`) or numpy's `.npz` (a zip of `.npy` files); None for
    anything else."""
    if magic[8:9] == b"{" and 2 <= int.from_bytes(magic[:8], "little") < 1 << 27:
        return "safetensors"
    if magic[:2] == b"\x80\x02":
        return "PyTorch"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any(n.endswith(("data.pkl", "constants.pkl")) for n in names):
            return "PyTorch"
        if names and all(n.endswith(".npy") for n in names):
            return "numpy .npz"
    return None


def read_tensors(path: str) -> dict[str, np.ndarray]:
    """The tensors of a `.safetensors`, `.npz` or PyTorch (`.pt`/`.pth`/`.bin`) file, as stored
    (keys unchanged, numpy values).

    PyTorch files need torch (not a runtime dependency) and load with `weights_only=True`;
    OpenAI's released `.pt` files are TorchScript archives and are read as such. Raises
    FileNotFoundError (no file) or ConfigError (a file that is not a readable checkpoint).
    """
    if not os.path.isfile(path):
        raise MissingFileError(f"No checkpoint file at {path!r}.")
    if os.path.getsize(path) == 0:
        raise ConfigError(f"{path!r} is empty (0 bytes): an interrupted copy or download? "
                          "Fetch the file again.")
    with open(path, "rb") as f:
        magic = f.read(64)
    if magic.startswith(b"version https://git-lfs"):  # a clone made without git-lfs
        raise ConfigError(f"{path!r} is a Git LFS pointer, not the file: fetch it (git lfs "
                          "pull, or download the file itself).")
    if all(32 <= b < 127 or b in b"\t\n\r" for b in magic):  # every binary format has others
        if path.lower().endswith((".json", ".txt")):  # a model folder's config or tokenizer
            raise ConfigError(f"{path!r} is a text file, not a checkpoint; for a model folder "
                              "(transformers' or open_clip's: a config beside the weights) pass "
                              f"the folder: {os.path.dirname(os.path.abspath(path))!r}; a "
                              "model config alone is an architecture: clip_jax.create_model("
                              f"json.load(open({path!r}))) for random weights, "
                              f"clip_jax.load(weights, model={path!r}) to pin a weights "
                              "file's.")
        raise ConfigError(f"{path!r} is not a checkpoint: it holds text ({magic[:24]!r}...), "
                          "an HTML page or a server's reply saved under that name? Download "
                          "the file again.")
    stored, suffix = _stored_format(path, magic), os.path.splitext(path)[1].lower()
    named = next((name for name, suffixes in _FORMATS.items() if suffix in suffixes), None)
    if stored and stored != named and (named or stored != "PyTorch"):  # others: torch.load
        raise ConfigError(f"{path!r} holds a {stored} file under the suffix {suffix or '(none)'}"
                          f"; rename it to {' or '.join(_FORMATS[stored])} (the suffix decides "
                          "how it is read, here as in open_clip and transformers).")
    if suffix == ".safetensors":  # any case: `.SAFETENSORS` was "none of safetensors, ..."
        try:
            return load_file(path)
        except Exception as e:
            raise ConfigError(f"{path!r} is not a readable safetensors file: {e}") from e
    if suffix == ".npz":
        try:
            with np.load(path) as f:
                return dict(f)
        except Exception as e:  # noqa: BLE001 - zipfile, EOF, pickle: all "unreadable"
            raise ConfigError(f"{path!r} is not a readable .npz file: {type(e).__name__}: "
                              f"{e}") from e
    if not (magic.startswith(b"PK") or magic[:2] == b"\x80\x02"):
        raise ConfigError(f"{path!r} is not a checkpoint: its bytes are none of safetensors, "
                          ".npz or PyTorch's zip or pickle formats (a text file saved under "
                          "that name?).")
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"Reading the PyTorch file {path!r} needs torch (pip install torch), "
                          "or convert it to .safetensors first.") from e
    try:
        if zipfile.is_zipfile(path) and any(n.endswith("constants.pkl")
                                            for n in zipfile.ZipFile(path).namelist()):
            state = torch.jit.load(path, map_location="cpu").state_dict()
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        if "Weights only load failed" in str(e):  # torch's refusal to unpickle objects
            raise ConfigError(
                f"{path!r} holds pickled Python objects besides tensors (a whole model saved "
                "with torch.save(model)?), which are not unpickled here: loading them can run "
                "any code. Save the weights alone: torch.save(model.state_dict(), PATH).") from e
        raise ConfigError(f"{path!r} could not be read as a PyTorch checkpoint: {e}") from e
    if not isinstance(state, Mapping):
        raise ConfigError(f"{path!r} holds a {type(state).__name__}, not a state dict.")
    return dict(state)


def save_safetensors(tensors: Mapping[str, np.ndarray], path: PathLike, dtype: str, *,
                     float32_scalars: bool = False) -> None:
    """Floating tensors cast to `dtype`; with `float32_scalars`, scalars (`logit_scale`,
    `logit_bias`) stay float32, as open_clip's low-precision conversion keeps them (a bfloat16
    logit_scale of ln 30 reads back as exp = 30.15, a 0.5 % change of every zero-shot
    temperature; transformers casts them with the rest). Metadata `format: pt`, as
    transformers writes it."""
    target = numpy_dtype(dtype)
    cast = {k: np.asarray(v.astype(np.float32 if float32_scalars and not v.ndim else target,
                                   copy=False)
                          if is_float(v) else v,
                          order="C")  # unlike np.ascontiguousarray, keeps 0-d shapes
            for k, v in tensors.items()}
    save_file(cast, os.fspath(path), metadata={"format": "pt"})
    os.chmod(path, 0o666 & ~_umask())  # safetensors writes 0600; match the other files


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    except (OSError, StopIteration):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def write_json(path: PathLike, content: Mapping[str, Any], *, sort_keys: bool = False) -> None:
    """`content` as indented UTF-8 JSON with a final newline (the files' committed layout)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(content, indent=2, sort_keys=sort_keys) + "\n")


def write_model_folder(output_dir: PathLike, write: Callable[[Path], None],
                       replaces: Callable[[str], bool]) -> Path:
    """Writes an exported model into `output_dir` (created if needed) as one unit: `write`
    fills a fresh hidden folder inside it, whose files then replace their namesakes, and the
    files of an earlier model of the same format that this export did not write
    (`replaces(name)`: say a transformers 5 `processor_config.json`, which transformers reads
    before the new `preprocessor_config.json`, or another model's weight shards) are removed.
    Other files (a README, logs) are kept. A failed `write` leaves `output_dir` as it was (a
    folder it created is removed again); reading the source model from `output_dir` itself
    is safe (files are replaced, never rewritten). Staged inside, not beside: a writable
    folder under a read-only one (a container's bind mount) failed after the whole export."""
    output_dir = Path(output_dir)
    created = not output_dir.exists()
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=output_dir))
    try:
        write(staging)
        written = set(os.listdir(staging))
        for name in sorted(written):
            os.replace(staging / name, output_dir / name)
        for name in sorted(os.listdir(output_dir)):
            if name not in written and replaces(name) and (output_dir / name).is_file():
                os.remove(output_dir / name)
    except BaseException:
        if created:
            shutil.rmtree(output_dir, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir
