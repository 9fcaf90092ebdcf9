"""Tokenizer files of a Hugging Face CLIP directory: written on export, read on import.

`vocab.json`/`merges.txt` are OpenAI's BPE; `tokenizer.json` is exactly the pipeline
`transformers.CLIPTokenizer` builds (NFC + whitespace collapse + lowercase, CLIP regex,
byte-level BPE with `</w>`), so every consumer of the directory tokenises alike. It reproduces
OpenAI's ids on ordinary captions; where HF's CLIP tokenizer diverges from OpenAI's (no ftfy or
HTML unescaping, special-token spelling, ...) see `clip_jax.data.tokenizer`'s docstring. Padding is
`<|endoftext|>`, as on the OpenAI checkpoints on the Hub: HF pools the text tower at the first
`eos_token_id` (49407), which is the real end of text whatever follows it, and the causal mask
keeps padding out of every position up to it. `tokenizer.json` truncates to the context length
keeping EOT last; `transformers.CLIPTokenizer` truncates only when asked (`truncation=True`,
`model_max_length` is the context length).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import tokenizers
from tokenizers import decoders, normalizers, pre_tokenizers, processors

from clip_jax.convert import hf_import
from clip_jax.convert.host import PathLike, write_json
from clip_jax.data.tokenizer import HF_EOT_TEXT, HF_SOT_TEXT, Tokenizer, default_tokenizer
from clip_jax.errors import ConfigError, MissingFileError

log = logging.getLogger(__name__)

# HF's CLIP pre-tokenizer regex (transformers' CLIPTokenizer, verbatim).
_HF_SPLIT = (r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]"
             r"|[^\s\p{L}\p{N}]+")


def save_tokenizer(tokenizer: Tokenizer, directory: PathLike, context_length: int) -> None:
    """vocab.json, merges.txt, tokenizer.json, tokenizer_config.json, special_tokens_map.json."""
    directory = Path(directory)
    tokenizer.save_hf(directory)
    bpe = tokenizers.models.BPE.from_file(
        str(directory / "vocab.json"), str(directory / "merges.txt"), dropout=None,
        continuing_subword_prefix="", end_of_word_suffix="</w>", fuse_unk=False,
        unk_token=HF_EOT_TEXT)
    fast = tokenizers.Tokenizer(bpe)
    fast.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(tokenizers.Regex(r"\s+"), " "),
         normalizers.Lowercase()])
    fast.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(tokenizers.Regex(_HF_SPLIT), behavior="removed", invert=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False)])
    fast.decoder = decoders.ByteLevel()
    fast.post_processor = processors.RobertaProcessing(
        (HF_EOT_TEXT, tokenizer.eot_token_id), (HF_SOT_TEXT, tokenizer.sot_token_id),
        trim_offsets=False, add_prefix_space=False)
    fast.add_special_tokens([tokenizers.AddedToken(s, special=True, normalized=False)
                             for s in (HF_SOT_TEXT, HF_EOT_TEXT)])
    fast.enable_truncation(max_length=context_length)
    fast.save(str(directory / "tokenizer.json"))
    special = {"bos_token": HF_SOT_TEXT, "eos_token": HF_EOT_TEXT, "unk_token": HF_EOT_TEXT,
               "pad_token": HF_EOT_TEXT}
    write_json(directory / "special_tokens_map.json", special, sort_keys=True)
    write_json(directory / "tokenizer_config.json", {
        "tokenizer_class": "CLIPTokenizer", "processor_class": "CLIPProcessor",
        "model_max_length": context_length, "add_prefix_space": False,
        "clean_up_tokenization_spaces": False, **special}, sort_keys=True)


def load_tokenizer(directory: PathLike) -> Tokenizer:
    """The OpenAI-exact tokenizer over a directory's own vocabulary.

    Reads `vocab.json` + `merges.txt`, or `tokenizer.json` alone (what transformers 5 saves).
    Tokenise with the model's context length:
    `load_tokenizer(d)(texts, context_length=module.config.context_length)`. A transformers
    model directory without tokenizer files (`CLIPModel.save_pretrained` writes none) gets
    `_openai_tokenizer_for`. Raises FileNotFoundError (no tokenizer files, and not such a
    directory) or ConfigError (not a CLIP BPE tokenizer).
    """
    directory = Path(directory)
    try:
        if (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
            return Tokenizer.from_hf(directory)
        if not (directory / "tokenizer.json").is_file():
            return _openai_tokenizer_for(directory)
        model = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8")).get(
            "model", {})
        if model.get("type") != "BPE" or model.get("end_of_word_suffix") != "</w>":
            raise ConfigError(f"{directory}/tokenizer.json is not a CLIP byte-level BPE "
                              f"tokenizer (model type {model.get('type')!r}); copy the model's "
                              "own vocab.json and merges.txt beside it.")
        merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
        return Tokenizer.from_hf_vocab(merges, model["vocab"], f"{directory}/tokenizer.json")
    except ConfigError:
        raise
    except ValueError as error:  # files that are no CLIP BPE pair: said of the folder
        raise ConfigError(f"{error}; clip_jax reads CLIP's byte-level BPE (transformers' "
                          "CLIPTokenizer files) only.") from None


def _openai_tokenizer_for(directory: Path) -> Tokenizer:
    """OpenAI's tokenizer, with a warning, for a transformers CLIP directory without tokenizer
    files whose text tower has exactly OpenAI's vocabulary size: the vocabulary of the CLIP
    checkpoints of that size (OpenAI's, open_clip's LAION models), and the one `get_tokenizer`
    gives a model that names none. Otherwise MissingFileError, whose fix is copying files (a
    command-line user has no Python call to make)."""
    tokenizer = default_tokenizer()
    vocab_size = None
    if hf_import.is_hf_directory(directory):  # as read_config resolves it, minus its warnings
        raw = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        vocab_size = hf_import.text_vocab_size(raw)
    if vocab_size == tokenizer.vocab_size:
        log.warning("%s has no tokenizer files; using OpenAI's CLIP vocabulary, which its "
                    "%d-token embedding table matches (if the model was trained with another "
                    "vocabulary, %s).", directory, vocab_size, _how_to_add_files(directory))
        return tokenizer
    size = (f" and its vocab_size {vocab_size} is not OpenAI's {tokenizer.vocab_size}"
            if vocab_size else "")
    raise MissingFileError(
        f"{directory} has no tokenizer files (vocab.json + merges.txt, or tokenizer.json){size}; "
        f"{_how_to_add_files(directory)}.")


def _how_to_add_files(directory: Path) -> str:
    """How the model's vocab.json and merges.txt get into `directory`: copied there, or, for a
    snapshot in the Hugging Face cache (`models--ORG--NAME/snapshots/REV`, whose files are
    links huggingface_hub manages), downloaded from its repo into the cache."""
    snapshots, repo = directory.parent, directory.parent.parent.name
    if snapshots.name == "snapshots" and repo.startswith("models--"):
        repo_id = repo.removeprefix("models--").replace("--", "/")
        return (f"it is the Hugging Face cache's copy of {repo_id}: add the files to the cache "
                f"with `hf download {repo_id} vocab.json merges.txt --revision {directory.name}` "
                "while online (a repo without them: its model's original repository has them)")
    return ("copy the model's own vocab.json and merges.txt from its original repository into "
            f"{directory}")
