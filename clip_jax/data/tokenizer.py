"""The exact OpenAI CLIP byte-level BPE tokenizer, batched and fast.

Token ids are identical to OpenAI's ``SimpleTokenizer`` (as shipped by open_clip):

* cleaning: ``ftfy.fix_text``, ``html.unescape`` twice, whitespace collapsed to single
  spaces (``str.split`` semantics), lowercase;
* pre-tokenisation with the CLIP regex (``regex`` module, IGNORECASE); a word that is exactly
  ``<start_of_text>`` / ``<end_of_text>`` becomes the special token, so whether literal
  special-token text is special depends on where the regex starts a word (``x <end_of_text>``
  yes, ``!<end_of_text>`` no);
* byte-level BPE with a ``</w>`` suffix on the last symbol of every word;
* ``[SOT] + tokens + [EOT]``, truncated so EOT stays last, zero-padded.

Speed comes from exact shortcuts, each checked against open_clip by the tests:

* ASCII text without ``&`` and without the control characters ftfy deletes skips ftfy and
  ``html.unescape``: on it they change nothing but line breaks, which the whitespace collapse
  erases anyway. ftfy (tens of microseconds a text) stays the main cost of non-ASCII text;
* lowercased ASCII text is split with an ASCII-only version of the regex on the faster ``re``
  engine (there ``\\p{L}`` is ``[a-z]``, ``\\p{N}`` is ``[0-9]`` and IGNORECASE is moot);
* BPE is a pure function of the word, so word -> ids is memoised (bounded by
  ``MAX_CACHED_WORDS``); the words a batch has not seen before are BPE'd by the Rust
  ``tokenizers`` library, space-joined into a few long inputs.

The splitting is not delegated to ``tokenizers`` because its regex engine and added-token
extraction cannot reproduce IGNORECASE (``'ſ`` matches ``'s``) or the position-dependent
special tokens.

Where Hugging Face's CLIP tokenizer diverges from OpenAI (``transformers.CLIPTokenizer``; since
transformers 5 it is the ``tokenizers``-backed one and ``CLIPTokenizerFast`` is an alias, so
there is no pure-Python "slow" CLIP tokenizer left to compare with):

* no ftfy and no HTML unescaping, only NFC: ``&amp;`` stays ``& amp ;``, mojibake stays
  mojibake, ligatures (``ﬁ``, ``Ǆ``), full-width letters and curly quotes are kept, control
  characters ftfy deletes (NUL, ESC with terminal escapes, DEL, BOM, ``\x1c``-``\x1f``) become
  tokens, and ``\x85`` is whitespace rather than ftfy's ``…``;
* it lowercases character by character, so a word-final ``Σ`` becomes ``σ``, not Python's ``ς``;
* its special tokens are spelled ``<|startoftext|>`` / ``<|endoftext|>`` (as OpenAI's original
  package spells them) and recognised anywhere in the text, so literal ``<|endoftext|>``
  becomes token 49407 where open_clip's tokenizer (the reference here) sees punctuation and
  letters, while open_clip's literal ``<end_of_text>`` is plain text to HF;
* its regex is case-sensitive (OpenAI's IGNORECASE makes ``'ſ`` a contraction, and drops
  some combining marks, e.g. U+0345 in a run of them, that match none of its alternatives
  under IGNORECASE, where HF keeps them);
* its letter class follows its own Unicode tables: code points ``regex`` reads as letters
  and Python 3.11's ``unicodedata`` as unassigned (U+0558, U+058B) split differently;
* it pads with ``<|endoftext|>`` (49407) by default where OpenAI pads with 0.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import html
import itertools
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from importlib import resources
from pathlib import Path

import ftfy
import numpy as np
import regex
import tokenizers
from tokenizers import pre_tokenizers

from clip_jax.errors import ConfigError
from clip_jax.runtime.logs import warn_once

log = logging.getLogger(__name__)

SOT_TEXT = "<start_of_text>"
EOT_TEXT = "<end_of_text>"
HF_SOT_TEXT = "<|startoftext|>"
HF_EOT_TEXT = "<|endoftext|>"
END_OF_WORD = "</w>"
DEFAULT_CONTEXT_LENGTH = 77
PAD_TOKEN_ID = 0
# OpenAI uses the first 49152 - 256 - 2 merges of the 16e6 file (vocab 49408 with the specials).
NUM_MERGES = 49152 - 256 - 2
HF_MERGES_HEADER = "#version: 0.2"
OPENAI_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
# Bound on memoised words (a few hundred bytes each); the cache is dropped and refilled past it.
MAX_CACHED_WORDS = 1 << 18
# A model's tokenizer: texts -> int32 ids [N, context_length] (what `clip_jax.get_tokenizer`
# returns, and what inference and evaluation take as `tokenizer=`).
TextTokenizer = Callable[[Sequence[str]], np.ndarray]
# Words per Rust input when BPE-ing unseen words; enough inputs remain for Rust's thread pool.
_WORDS_PER_BPE_CALL = 256

_WORD_RE = regex.compile(
    r"<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
    regex.IGNORECASE,
)
# _WORD_RE for cleaned ASCII text (lowercase, no whitespace but ' '), where it finds the same words.
_ASCII_WORD_RE = re.compile(
    r"<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+"
)
# ASCII characters that ftfy or html.unescape may turn into something other than whitespace:
# '&' starts HTML entities; ftfy deletes these control characters (ESC also starts terminal
# escapes). ftfy leaves every other ASCII character alone except '\r', which becomes '\n'.
_FTFY_SENSITIVE_ASCII = re.compile(r"[&\x00-\x08\x0b\x0e-\x1f\x7f]")


@functools.cache
def _byte_to_symbol() -> dict[int, str]:
    """GPT-2's reversible byte-to-unicode map, in vocabulary order.

    Printable Latin-1 bytes stand for themselves and come first; the remaining bytes get the
    code points 256, 257, ... in byte order, so BPE symbols never contain whitespace or controls.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    others = [b for b in range(256) if b not in set(printable)]
    return {b: chr(b) for b in printable} | {b: chr(256 + n) for n, b in enumerate(others)}


@functools.cache
def _symbol_to_byte() -> dict[str, int]:
    return {s: b for b, s in _byte_to_symbol().items()}


def clean_text(text: str) -> str:
    """OpenAI CLIP's text cleaning: ftfy, double HTML unescape, whitespace collapse, lowercase."""
    if not text.isascii() or _FTFY_SENSITIVE_ASCII.search(text) is not None:
        text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split()).lower()


def _split_words(text: str) -> list[str]:
    """Clean ``text`` and split it into the words that BPE encodes one by one."""
    text = clean_text(text)
    return (_ASCII_WORD_RE if text.isascii() else _WORD_RE).findall(text)


def _default_vocab_path() -> Path:
    return Path(str(resources.files("clip_jax") / "assets" / OPENAI_VOCAB_FILE))


def _read_openai_merges(path: Path) -> list[tuple[str, str]]:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    lines = raw.decode("utf-8").split("\n")[1 : 1 + NUM_MERGES]
    return [_parse_merge(line) for line in lines]


def _parse_merge(line: str) -> tuple[str, str]:
    parts = line.split()
    if len(parts) != 2:
        raise ValueError(f"malformed BPE merge line: {line!r}")
    return parts[0], parts[1]


def _check_context_length(context_length: int) -> int:
    if isinstance(context_length, bool) or not isinstance(context_length, (int, np.integer)):
        raise TypeError(f"context_length must be an int, got {type(context_length).__name__}")
    if context_length < 2:
        raise ValueError(
            f"context_length must be >= 2 (room for SOT and EOT), got {context_length}"
        )
    return int(context_length)


def _numbered(tokens: list[str], ids: Mapping[str, int]) -> list[str]:
    """`tokens` in the order `ids` numbers them; ValueError unless `ids` numbers exactly these
    tokens 0..N-1 (naming a few that differ)."""
    if set(ids) != set(tokens):
        extra, missing = sorted(set(ids) - set(tokens)), sorted(set(tokens) - set(ids))
        raise ValueError(
            f"the vocabulary ({len(ids)} tokens) is not the {len(tokens)} the merges make "
            f"(e.g. not made by any merge: {extra[:3]}; made but missing: {missing[:3]}): the "
            "files are not one CLIP BPE tokenizer's")
    if sorted(ids.values()) != list(range(len(tokens))):
        raise ValueError(f"the vocabulary's ids are not 0..{len(tokens) - 1}, each once")
    return sorted(tokens, key=ids.__getitem__)


def _build_word_bpe(vocab: dict[str, int], merges: list[tuple[str, str]]) -> tokenizers.Tokenizer:
    """Rust byte-level BPE of space-separated words (our words never contain whitespace)."""
    model = tokenizers.models.BPE(
        vocab=vocab,
        merges=merges,
        continuing_subword_prefix="",
        end_of_word_suffix=END_OF_WORD,
        fuse_unk=False,
    )
    bpe = tokenizers.Tokenizer(model)
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.CharDelimiterSplit(" "),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    return bpe


class Tokenizer:
    """OpenAI CLIP tokenizer: ``tokenizer(texts) -> int32 [N, context_length]``."""

    def __init__(self, merges: Sequence[tuple[str, str]], ids: Mapping[str, int] | None = None):
        """Build from the ordered BPE merges; the vocabulary follows from them as in OpenAI CLIP
        (bytes, bytes + `</w>`, one token per merge, SOT, EOT). `ids` (token -> id, the
        specials spelt `SOT_TEXT` / `EOT_TEXT`) numbers that vocabulary otherwise: a vocab.json
        that orders the same tokens its own way. ValueError when `ids` holds other tokens or
        is not numbered 0..N-1."""
        merges = [(a, b) for a, b in merges]
        symbols = list(_byte_to_symbol().values())
        tokens = symbols + [s + END_OF_WORD for s in symbols] + [a + b for a, b in merges]
        tokens += [SOT_TEXT, EOT_TEXT]
        if len(set(tokens)) != len(tokens):
            raise ValueError("BPE merges produce duplicate vocabulary entries")
        if ids is not None:
            tokens = _numbered(tokens, ids)
        vocab = {t: i for i, t in enumerate(tokens)}
        self._merges = merges
        self._id_to_token = tokens
        self._vocab = vocab
        self._word_bpe = _build_word_bpe(vocab, merges)
        self._ends_word = np.array([t.endswith(END_OF_WORD) for t in tokens])
        self._word_ids = self._new_word_cache()

    def _new_word_cache(self) -> dict[str, tuple[int, ...]]:
        # The special words bypass BPE, as in OpenAI's tokenizer.
        return {SOT_TEXT: (self.sot_token_id,), EOT_TEXT: (self.eot_token_id,)}

    @classmethod
    def from_openai_vocab(cls, path: str | Path | None = None) -> Tokenizer:
        """Load OpenAI's ``bpe_simple_vocab_16e6.txt[.gz]`` (default: the copy clip_jax ships)."""
        return cls(_read_openai_merges(Path(path) if path is not None else _default_vocab_path()))

    @classmethod
    def from_hf(cls, directory: str | Path) -> Tokenizer:
        """Load a Hugging Face CLIP ``vocab.json`` + ``merges.txt`` pair (`from_hf_vocab`)."""
        directory = Path(directory)
        return cls.from_hf_vocab(
            (directory / "merges.txt").read_text(encoding="utf-8").split("\n"),
            json.loads((directory / "vocab.json").read_text(encoding="utf-8")),
            f"{directory}/vocab.json and merges.txt")

    @classmethod
    def from_hf_vocab(cls, merge_lines: Sequence[str], hf_vocab: Mapping[str, int],
                      source: str) -> Tokenizer:
        """A tokenizer of Hugging Face CLIP merges (`"a b"` lines, an optional `#version`
        header) and vocabulary (token -> id, HF's spelling of the special tokens).

        The merges decide how text splits, the vocabulary what each token's id is, as in
        transformers. ValueError naming `source` when the vocabulary does not hold exactly the
        tokens the merges make (not one CLIP BPE's pair of files)."""
        lines = list(merge_lines)
        if lines and lines[0].startswith("#version"):
            lines = lines[1:]
        merges = [_parse_merge(line) for line in lines if line.strip()]
        renamed = {HF_SOT_TEXT: SOT_TEXT, HF_EOT_TEXT: EOT_TEXT}
        try:
            return cls(merges, {renamed.get(t, t): i for t, i in hf_vocab.items()})
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None

    def save_hf(self, directory: str | Path) -> None:
        """Write ``vocab.json`` and ``merges.txt`` in Hugging Face's CLIP format."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        renamed = {SOT_TEXT: HF_SOT_TEXT, EOT_TEXT: HF_EOT_TEXT}
        vocab = {renamed.get(t, t): i for i, t in enumerate(self._id_to_token)}
        (directory / "vocab.json").write_text(
            json.dumps(vocab, ensure_ascii=False), encoding="utf-8"
        )
        merges = "".join(
            f"{line}\n" for line in [HF_MERGES_HEADER, *(f"{a} {b}" for a, b in self._merges)]
        )
        (directory / "merges.txt").write_text(merges, encoding="utf-8")

    @property
    def sot_token_id(self) -> int:
        return self._vocab[SOT_TEXT]

    @property
    def eot_token_id(self) -> int:
        return self._vocab[EOT_TEXT]

    @property
    def pad_token_id(self) -> int:
        return PAD_TOKEN_ID

    @property
    def vocab_size(self) -> int:
        return len(self._id_to_token)

    def same_as(self, other: Tokenizer) -> bool:
        """Whether both give the same ids for every text: the same merges in the same order,
        and the same ids for the tokens they make."""
        return self._merges == other._merges and self._id_to_token == other._id_to_token

    def _encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text, BPE-ing the words no earlier call has seen in one Rust batch."""
        word_lists = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                missing = " (a missing value: drop or fill the empty rows)" if (
                    isinstance(text, float) and text != text) else ""
                raise TypeError(f"texts must contain str only, got a {type(text).__name__} "
                                f"{text!r} at position {i}{missing}")
            word_lists.append(_split_words(text))
        # A local reference keeps this call consistent if another thread replaces the cache.
        word_ids = self._word_ids
        unseen = {w for words in word_lists for w in words if w not in word_ids}
        if unseen:
            if len(word_ids) + len(unseen) > MAX_CACHED_WORDS:
                word_ids = self._word_ids = self._new_word_cache()
                unseen = {w for words in word_lists for w in words if w not in word_ids}
            unseen_words = list(unseen)
            word_ids.update(zip(unseen_words, self._bpe_words(unseen_words), strict=True))
        lookup = word_ids.__getitem__
        return [list(itertools.chain.from_iterable(map(lookup, words))) for words in word_lists]

    def _bpe_words(self, words: list[str]) -> list[tuple[int, ...]]:
        """BPE ids of each word, computed by Rust on a few long space-joined inputs.

        Rust's per-input overhead dwarfs the BPE of one word, hence the joining. The ids are cut
        back into words after each token ending in ``</w>``: a word's last token always does, and
        no other can, because a CLIP regex word never contains the literal text ``</w>``.
        """
        chunks = [
            " ".join(words[i : i + _WORDS_PER_BPE_CALL])
            for i in range(0, len(words), _WORDS_PER_BPE_CALL)
        ]
        ids = [
            t
            for e in self._word_bpe.encode_batch_fast(chunks, add_special_tokens=False)
            for t in e.ids
        ]
        ends = (np.flatnonzero(self._ends_word[ids]) + 1).tolist()
        if len(ends) != len(words):
            raise RuntimeError(
                f"internal error: BPE gave {len(ends)} word ends for {len(words)} words"
            )
        return [tuple(ids[start:end]) for start, end in zip([0, *ends[:-1]], ends, strict=True)]

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without SOT/EOT and without truncation."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        return self._encode_batch([text])[0]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of one sequence of token ids as OpenAI decodes it: ``</w>`` becomes a space.

        Every id is decoded, special and padding ones too (pad id 0 is the token ``!``), so pass
        the ids up to EOT rather than a padded row.
        """
        ids = np.asarray(ids)
        if ids.ndim != 1 or not (ids.size == 0 or np.issubdtype(ids.dtype, np.integer)):
            raise TypeError(
                f"ids must be a 1-D sequence of ints, got shape {ids.shape} and dtype {ids.dtype}"
            )
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(
                f"token ids must be in [0, {self.vocab_size}), got {ids.min()}..{ids.max()}"
            )
        symbols = "".join([self._id_to_token[i] for i in ids.tolist()])
        to_byte = _symbol_to_byte()
        return (
            bytes([to_byte[s] for s in symbols])
            .decode("utf-8", errors="replace")
            .replace(END_OF_WORD, " ")
        )

    def __call__(
        self, texts: str | Sequence[str], context_length: int = DEFAULT_CONTEXT_LENGTH
    ) -> np.ndarray:
        """Tokenise ``texts`` to int32 ``[N, context_length]``: SOT, tokens, EOT, zero padding.

        Longer texts are cut so that EOT remains the last token, as OpenAI does. Any iterable
        of str is accepted (e.g. a numpy array of str); a single str gives one row. Raises
        TypeError (bytes, a non-iterable, a non-int `context_length`) or ValueError
        (`context_length` < 2).
        """
        context_length = _check_context_length(context_length)
        if isinstance(texts, str):
            texts = [texts]
        elif isinstance(texts, (bytes, bytearray)) or not isinstance(texts, Iterable):
            raise TypeError(f"texts must be str or a sequence of str, got {type(texts).__name__}")
        return self._to_array(self._encode_batch(list(texts)), context_length)

    def _to_array(self, ids: list[list[int]], context_length: int) -> np.ndarray:
        """Assemble ``[SOT] + ids[:context_length - 2] + [EOT]`` rows with vectorised numpy."""
        n = len(ids)
        out = np.zeros((n, context_length), dtype=np.int32)
        if n == 0:
            return out
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=n)
        flat = np.fromiter(
            itertools.chain.from_iterable(ids), dtype=np.int32, count=int(lengths.sum())
        )
        rows = np.repeat(np.arange(n), lengths)
        positions = np.arange(flat.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        keep = positions < context_length - 2
        out[:, 0] = self.sot_token_id
        out[rows[keep], positions[keep] + 1] = flat[keep]
        out[np.arange(n), np.minimum(lengths, context_length - 2) + 1] = self.eot_token_id
        return out


@dataclasses.dataclass(frozen=True)
class ModelTokenizer:
    """A `Tokenizer` at one model's context length: what `clip_jax.get_tokenizer` returns.

    Called as open_clip's tokenizer is, `tokenizer(texts) -> int32 [N, context_length]`
    (`context_length=` another length); reads `context_length`, and everything else of its
    `Tokenizer` (`encode`, `decode`, `vocab_size`, `sot_token_id`, `eot_token_id`), as
    open_clip's `get_tokenizer` result does (it was a `functools.partial`, with none of them).
    """

    tokenizer: Tokenizer
    context_length: int

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None
                 ) -> np.ndarray:
        return self.tokenizer(texts, context_length=self.context_length if context_length is None
                              else context_length)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "tokenizer":  # copy/pickle probe before init
            raise AttributeError(name)
        return getattr(self.tokenizer, name)


@functools.cache
def default_tokenizer() -> Tokenizer:
    """The tokenizer for the shipped OpenAI vocabulary, built on first use (about 0.5 s)."""
    return Tokenizer.from_openai_vocab()


def tokenize(
    texts: str | Sequence[str], context_length: int = DEFAULT_CONTEXT_LENGTH
) -> np.ndarray:
    """Tokenise with the default OpenAI CLIP tokenizer: int32 ``[N, context_length]`` (one row
    for a single str). Raises TypeError for texts that are not str or an iterable of str, or a
    non-int `context_length`, and ValueError for a `context_length` below 2."""
    return default_tokenizer()(texts, context_length=context_length)


def openai_for(vocab_size: int, context_length: int) -> TextTokenizer:
    """OpenAI's tokenizer at `context_length` (texts -> int32 [N, context_length]) for a model
    of `vocab_size` token embeddings. ConfigError when those are fewer than OpenAI's vocabulary:
    the model was trained with its own, and OpenAI's ids would read past its embedding table
    (NaN embeddings). More than OpenAI's: one warning (per size), as the model may have a
    vocabulary of its own whose ids OpenAI's would silently differ from (trial BH: a module
    of 49,410 embeddings got OpenAI's ids, not its repo's)."""
    openai = default_tokenizer()
    if vocab_size < openai.vocab_size:
        raise ConfigError(f"The model has {vocab_size} token embeddings, fewer than OpenAI's "
                          f"tokenizer's {openai.vocab_size}: it has its own vocabulary; pass "
                          "tokenizer=clip_jax.get_tokenizer(<model dir or repo>) (the clip-jax "
                          "commands read it from a model folder's vocab.json and merges.txt).")
    if vocab_size > openai.vocab_size:
        warn_once(log, "The model has %d token embeddings, more than OpenAI's tokenizer's %d: "
                  "texts are tokenized with OpenAI's, and if the model was trained with a "
                  "vocabulary of its own, clip_jax.get_tokenizer(<model dir or repo>) reads "
                  "that one.", vocab_size, openai.vocab_size)
    return ModelTokenizer(openai, context_length)
