"""clip_jax.data.tokenizer against open_clip's SimpleTokenizer (OpenAI's tokenizer), the reference.

Hugging Face's CLIP tokenizer is checked on ordinary ASCII captions only; where it diverges from
OpenAI on other text, ``test_hf_divergences_from_openai`` pins the known differences so the
module docstring's list stays true.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import string
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest  # noqa: E402
pytest.importorskip("open_clip")  # the test extra; without it these tests skip
pytest.importorskip("transformers")
import open_clip
import transformers
from open_clip import tokenizer as open_clip_tokenizer

from clip_jax.data import tokenizer as tokenizer_module
from clip_jax.data.tokenizer import Tokenizer, clean_text, tokenize

SOT, EOT = 49406, 49407

CORPUS = [
    # ordinary captions
    "a photo of a cat",
    "A Photo Of A DOG sitting on the grass.",
    "Two people riding bikes down a busy street at night, 4K!!!",
    "IMG_20190412_183045.JPG",
    "price: $19.99 (was $25) -- 20% off #sale @shop",
    # apostrophes: contractions, upper case, curly and modifier ones
    "it's the dog's ball, they're here, we've, I'm, you'll, he'd, don't",
    "IT'S THE DOG'S BALL, THEY'RE HERE, WE'VE, I'M, YOU'LL, HE'D, DON'T",
    "'S 'LL 'Re 'vE 'M 'D 'T",
    "it’s the dog’s ‘ball’ “quoted” ʼs ′s",
    "'ſ 'ſtart <ſtart_of_text> K",
    # HTML entities, escaped once and twice, and entity-like text
    "fish &amp; chips &lt;b&gt;bold&lt;/b&gt; &quot;hi&quot; &#39;x&#39; &#x2019; &hellip;",
    "&amp;amp; &amp;lt;tag&amp;gt; &amp;amp;amp; &nbsp;x&nbsp; &eacute;t&eacute; &EACUTE; &copy",
    "AT&T and R&D & more; a&b <b>tags</b> &",
    "&#0; &#1; &#128; &#xd800; &#1114112; &#65; &notin; &not",
    # mojibake that ftfy repairs
    "âœ” No problems",
    "The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.",
    "Ã©tÃ© Ã  la plage, Ã¼ber cafÃ©",
    "â€œsmart quotesâ€\x9d and Â£5",
    # accents, combining characters, case mapping specials
    "naïve café crème brûlée São Paulo Zürich Ångström",
    "cafe\u0301 e\u0301\u0302\u0303 a\u0308 n\u0303 \u0301alone",
    "İstanbul ıi ß ẞ ΣΑΣ όσος ﬁne ﬂow Ǆ ǅ",
    # CJK, Arabic, Hebrew, other scripts
    "東京の夜景 北京 中文字符 한국어 テスト ｶﾀｶﾅ Ｔｏｋｙｏ　ＬＯＵＤ",
    "مرحبا بالعالم القاهرة ١٢٣ שלום עולם ירושלים",
    "Москва Ελλάδα हिन्दी ภาษาไทย ქართული",
    # emoji: presentation selectors, skin tones, ZWJ sequences, flags
    "🙂 👍🏽 👨‍👩‍👧 🇯🇵🇫🇷 ❤️ ☺︎ 🐶🐱 #️⃣",
    # numbers
    "1234567890 3.14159 1,000,000 ½ ² ⁴ ٣ Ⅻ 𝟘𝟙 ①",
    # whitespace oddities and zero-width characters
    "\t tabs\tand\nnewlines\r\nand\rreturns \x0b\x0c ",
    "no\u00a0break\u2009thin\u3000ideographic\u2028line\u2029para\u0085nel",
    "zero\u200bwidth\u200cjoiner\u200dmark\ufeffbom\u2060wj",
    "\x1c\x1d\x1e\x1f separators",
    # control characters and terminal escapes
    "nul\x00bell\x07esc\x1b[31mred\x1b[0m del\x7f c1\x80\x9f",
    # empty and whitespace-only
    "",
    " ",
    "\t\n\r \u00a0\u3000",
    # literal special-token text, in both spellings, in several positions
    "<start_of_text>",
    "<end_of_text>",
    "a <start_of_text> b <end_of_text> c",
    "<START_OF_TEXT> and <End_Of_Text>",
    "!<start_of_text> x<end_of_text>y (<end_of_text>)",
    "<|startoftext|> hello <|endoftext|>",
    "</w> a</w> <w>",
    # long texts, far over 77 tokens
    "a very long caption " * 40,
    "supercalifragilisticexpialidocious" * 30,
    "x" * 1000,
    "🙂" * 200,
    "日本語" * 100,
    "! " * 200,
]


def random_texts(count: int, seed: int) -> list[str]:
    """Seeded random strings mixing the corpus' ingredients with random code points."""
    rng = random.Random(seed)
    fragments = [
        "'s",
        "'S",
        "'LL",
        "'ll",
        "’s",
        "'re",
        "'ve",
        "'m",
        "'d",
        "'t",
        "'ſ",
        "'",
        "&amp;",
        "&amp;amp;",
        "&lt;",
        "&gt;",
        "&quot;",
        "&#39;",
        "&nbsp;",
        "&eacute;",
        "&EACUTE;",
        "&#x2019;",
        "&hellip;",
        "&",
        "&#",
        ";",
        "<start_of_text>",
        "<end_of_text>",
        "<START_OF_TEXT>",
        "<|endoftext|>",
        "<|startoftext|>",
        "<",
        ">",
        "_",
        "</w>",
        "\t",
        "\n",
        "\r\n",
        "\r",
        "\u00a0",
        "\u200b",
        "\u2028",
        "\u3000",
        "\x0b",
        "\x0c",
        "\x1c",
        "\x00",
        "\x1b[31m",
        "\x7f",
        "\x85",
        "\x9d",
        "\ufeff",
        "é",
        "e\u0301",
        "\u0301",
        "İ",
        "ß",
        "Σ",
        "ﬁ",
        "Ｔｏｋｙｏ",
        "ｶﾀｶﾅ",
        "日本語",
        "中文",
        "한국어",
        "العربية",
        "עברית",
        "🙂",
        "👍🏽",
        "👨‍👩‍👧",
        "🇯🇵",
        "❤️",
        "Ã©",
        "â€™",
        "âœ”",
        "Ã¼",
        "Â£",
        "½",
        "²",
        "٣",
        "Ⅻ",
        "𝕏",
        "…",
        "—",
        "“",
        "”",
    ]
    ascii_chars = string.ascii_letters + string.digits + string.punctuation + "    "

    def piece() -> str:
        kind = rng.random()
        if kind < 0.35:
            return "".join(rng.choices(ascii_chars, k=rng.randrange(1, 12)))
        if kind < 0.7:
            return rng.choice(fragments)
        if kind < 0.8:
            return chr(rng.randrange(0x80, 0x3000))
        if kind < 0.9:
            code_point = rng.randrange(0x3000, 0x110000)
            return chr(code_point) if not 0xD800 <= code_point < 0xE000 else "?"
        return " "

    texts = []
    for _ in range(count):
        pieces = rng.randrange(0, 60) if rng.random() < 0.1 else rng.randrange(0, 12)
        texts.append("".join(piece() for _ in range(pieces)))
    return texts


def random_ascii_texts(count: int, seed: int) -> list[str]:
    """Random strings over all 128 ASCII characters, biased towards the characters that matter."""
    rng = random.Random(seed)
    alphabet = [chr(c) for c in range(128)]
    interesting = [
        *list("&<>;#'_ \t\n\r\x0b\x0c\x1b\x00\x7f"),
        "&amp;",
        "&lt;",
        "\r\n",
        "\x1b[1m",
        "'S",
        "'ll",
    ]
    texts = []
    for _ in range(count):
        pool = alphabet if rng.random() < 0.5 else alphabet + interesting * 8
        texts.append("".join(rng.choices(pool, k=rng.randrange(0, 40))))
    return texts


@pytest.fixture(scope="module")
def ours() -> Tokenizer:
    return Tokenizer.from_openai_vocab()


@pytest.fixture(scope="module")
def reference():
    return open_clip.get_tokenizer("ViT-B-32")


@pytest.fixture(scope="module")
def hf_dir(ours, tmp_path_factory):
    directory = tmp_path_factory.mktemp("hf_tokenizer")
    ours.save_hf(directory)
    return directory


def reference_ids(reference, texts, context_length=77) -> np.ndarray:
    return reference(texts, context_length=context_length).numpy()


@pytest.mark.parametrize("context_length", [77, 16, 3, 2])
def test_corpus_matches_open_clip(ours, reference, context_length):
    got = ours(CORPUS, context_length=context_length)
    assert got.dtype == np.int32 and got.shape == (len(CORPUS), context_length)
    np.testing.assert_array_equal(got, reference_ids(reference, CORPUS, context_length))


def test_encode_and_decode_match_open_clip(ours, reference):
    for text in CORPUS:
        ids = ours.encode(text)
        assert ids == reference.encode(text), text
        assert ours.decode(ids) == reference.decode(ids), text


def test_random_texts_match_open_clip(ours, reference):
    texts = random_texts(3000, seed=1234)
    np.testing.assert_array_equal(ours(texts), reference_ids(reference, texts))
    # Texts of a second batch reuse the word cache filled by the first.
    more = random_texts(500, seed=99)
    np.testing.assert_array_equal(ours(more), reference_ids(reference, more))


def test_single_text_and_module_level_tokenize(ours, reference):
    text = "A photo of a naïve café &amp; <end_of_text>"
    np.testing.assert_array_equal(ours(text), reference_ids(reference, [text]))
    np.testing.assert_array_equal(tokenize([text, "x"]), reference_ids(reference, [text, "x"]))
    np.testing.assert_array_equal(
        tokenize(text, context_length=5), reference_ids(reference, [text], 5)
    )
    assert tokenizer_module.default_tokenizer() is tokenizer_module.default_tokenizer()


def test_truncation_keeps_eot_last(ours, reference):
    row = ours("word " * 200)[0]
    assert row[0] == SOT and row[-1] == EOT and np.all(row[1:-1] != 0)
    np.testing.assert_array_equal(ours("a b c", context_length=2), [[SOT, EOT]])
    np.testing.assert_array_equal(ours("", context_length=2), [[SOT, EOT]])
    for context_length in (4, 5, 6):  # "a b c" is 3 tokens: cut, exact fit, one pad
        np.testing.assert_array_equal(
            ours("a b c", context_length), reference_ids(reference, ["a b c"], context_length)
        )


def test_clean_text_matches_open_clip(monkeypatch):
    def openai_clean(text: str) -> str:
        return open_clip_tokenizer.whitespace_clean(open_clip_tokenizer.basic_clean(text)).lower()

    texts = random_ascii_texts(3000, seed=7) + random_texts(500, seed=8) + CORPUS
    for text in texts:
        assert clean_text(text) == openai_clean(text), repr(text)

    # The ASCII fast path really skips ftfy: a plain ASCII text (tabs, CR LF, '<' included) is
    # cleaned without calling it.
    plain = " A <b>Photo</b>\tof a CAT;\r\n it's 100% real! "
    expected = openai_clean(plain)
    assert expected == "a <b>photo</b> of a cat; it's 100% real!"

    def fail(text: str) -> str:
        raise AssertionError(f"ftfy called on {text!r}")

    monkeypatch.setattr(tokenizer_module.ftfy, "fix_text", fail)
    assert clean_text(plain) == expected


def test_ascii_regex_equals_full_regex():
    """The ASCII-only split regex finds the same words on every cleaned ASCII text."""
    chars = [chr(c) for c in range(128)]
    texts = [a + b for a in chars for b in chars]
    texts += [a + b + c for a in "'<_s" for b in chars for c in "sStTlLdDmMrReEvV'<_"]
    texts += random_ascii_texts(3000, seed=3)
    texts += ["<start_of_text>", "x<end_of_text>y", "!<start_of_text>", "'lll 're've 'd'm"]
    ascii_re, full_re = tokenizer_module._ASCII_WORD_RE, tokenizer_module._WORD_RE
    for text in texts:
        cleaned = " ".join(text.split()).lower()
        assert ascii_re.findall(cleaned) == full_re.findall(cleaned), repr(cleaned)


def test_bounded_word_cache_stays_exact(reference, monkeypatch):
    monkeypatch.setattr(tokenizer_module, "MAX_CACHED_WORDS", 50)
    small = Tokenizer.from_openai_vocab()
    for seed in range(3):
        texts = random_texts(100, seed=seed)
        np.testing.assert_array_equal(small(texts), reference_ids(reference, texts))
        assert len(small._word_ids) <= 50 + len(
            {w for t in texts for w in tokenizer_module._split_words(t)}
        )


def test_properties(ours, reference):
    assert ours.sot_token_id == reference.sot_token_id == SOT
    assert ours.eot_token_id == reference.eot_token_id == EOT
    assert ours.pad_token_id == 0
    assert ours.vocab_size == reference.vocab_size == 49408
    assert ours([]).shape == (0, 77)


def test_vocab_file_is_shipped_and_plain_text_loads(reference, tmp_path):
    shipped = tokenizer_module._default_vocab_path()
    assert shipped.read_bytes() == Path(open_clip_tokenizer.default_bpe()).read_bytes()
    assert (shipped.parent / "LICENSE_bpe_vocab.txt").read_text().count(
        "Copyright (c) 2021 OpenAI"
    ) == 1
    plain = tmp_path / "bpe_simple_vocab_16e6.txt"
    plain.write_bytes(gzip.decompress(shipped.read_bytes()))
    texts = CORPUS[:20]
    np.testing.assert_array_equal(
        Tokenizer.from_openai_vocab(plain)(texts), reference_ids(reference, texts)
    )


def test_save_hf_and_from_hf_round_trip(reference, hf_dir):
    merges = (hf_dir / "merges.txt").read_text(encoding="utf-8").split("\n")
    assert merges[0] == "#version: 0.2" and len([m for m in merges[1:] if m]) == 48894
    vocab = json.loads((hf_dir / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 49408 and vocab["<|startoftext|>"] == SOT and vocab["<|endoftext|>"] == EOT
    loaded = Tokenizer.from_hf(hf_dir)
    texts = CORPUS + random_texts(300, seed=5)
    np.testing.assert_array_equal(loaded(texts), reference_ids(reference, texts))


def test_a_vocabulary_with_more_merges_than_openais_gives_transformers_ids(hf_dir, tmp_path):
    """OpenAI's merges and two more (a vocabulary of 49,410 tokens) were refused as "not the
    49408 the merges make": the merges were cut at OpenAI's count, which applies to OpenAI's
    own file alone (trial BH). transformers reads them all; so do we, with its ids."""
    from clip_jax.convert.hf_tokenizer import load_tokenizer

    vocab = json.loads((hf_dir / "vocab.json").read_text(encoding="utf-8"))
    merges = (hf_dir / "merges.txt").read_text(encoding="utf-8").rstrip("\n").split("\n")
    extra = [("q", "q</w>"), ("z", "q</w>")]
    sot, eot = vocab.pop("<|startoftext|>"), vocab.pop("<|endoftext|>")
    for a, b in extra:
        vocab[a + b] = len(vocab)
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = sot + 2, eot + 2
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (tmp_path / "merges.txt").write_text(
        "\n".join(merges + [f"{a} {b}" for a, b in extra]) + "\n", encoding="utf-8")
    hf = transformers.CLIPTokenizer.from_pretrained(tmp_path)
    texts = ASCII_CAPTIONS + ["a photo of a qq", "zq qq zqq", "QQ, zq!"]
    out = hf(texts, padding="max_length", truncation=True, max_length=77, return_tensors="np")
    want = np.where(out["attention_mask"] == 1, out["input_ids"], 0)
    assert {49406, 49407} <= set(want.ravel().tolist())  # the two new tokens are used
    loaded = load_tokenizer(tmp_path)
    assert loaded.vocab_size == 49410
    np.testing.assert_array_equal(loaded(texts), want)


def test_a_vocab_numbering_the_tokens_its_own_way_gives_transformers_ids(hf_dir, tmp_path):
    """A vocab.json that numbers the merges' tokens in another order (transformers reads it:
    the merges split, the vocabulary numbers) was refused as "vocab.json does not match
    merges.txt", and, as tokenizer.json, named a temporary folder. Its ids are now
    transformers'; a vocabulary of other tokens is refused naming the files."""
    from clip_jax.convert.hf_tokenizer import load_tokenizer
    from clip_jax.errors import ConfigError

    vocab = json.loads((hf_dir / "vocab.json").read_text(encoding="utf-8"))
    vocab["cat</w>"], vocab["dog</w>"] = vocab["dog</w>"], vocab["cat</w>"]
    vocab["a"], vocab["b"] = vocab["b"], vocab["a"]
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (tmp_path / "merges.txt").write_text(
        (hf_dir / "merges.txt").read_text(encoding="utf-8"), encoding="utf-8")
    hf = transformers.CLIPTokenizer.from_pretrained(tmp_path)
    texts = ASCII_CAPTIONS + ["a cat and a dog", "ab ba aab"]
    out = hf(texts, padding="max_length", truncation=True, max_length=77, return_tensors="np")
    want = np.where(out["attention_mask"] == 1, out["input_ids"], 0)
    for loaded in (Tokenizer.from_hf(tmp_path), load_tokenizer(tmp_path)):
        np.testing.assert_array_equal(loaded(texts), want)
        assert not loaded.same_as(Tokenizer.from_hf(hf_dir))
    hf.save_pretrained(tmp_path / "json")  # tokenizer.json alone, as transformers 5 writes
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / "json" / name).unlink(missing_ok=True)
    np.testing.assert_array_equal(load_tokenizer(tmp_path / "json")(texts), want)
    del vocab["dog</w>"]
    vocab["zqxjv</w>"] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^{tmp_path}/vocab.json and merges.txt: the "
                                          r"vocabulary \(49408 tokens\) is not the 49408 the "
                                          r"merges make \(e.g. not made by any merge: "
                                          r"\['zqxjv</w>'\]; made but missing: \['dog</w>'\]\)"):
        load_tokenizer(tmp_path)


ASCII_CAPTIONS = [
    "a photo of a cat",
    "A Photo Of A DOG sitting on the grass.",
    "Two people riding bikes down a busy street at night, 4K!!!",
    "it's the dog's ball, they're here, we've, I'm, you'll, he'd, don't",
    "price: $19.99 (was $25) -- 20% off #sale @shop",
    "IMG_20190412_183045.JPG",
    "  extra   spaces\tand a tab  ",
    "a very long caption " * 40,
]


def test_hf_tokenizer_reproduces_ids_on_ascii_captions(ours, hf_dir):
    # In transformers 5 CLIPTokenizer is tokenizers-backed and CLIPTokenizerFast is an alias of it;
    # there is no pure-Python CLIP tokenizer any more.
    for cls in (transformers.CLIPTokenizer, transformers.CLIPTokenizerFast):
        hf = cls.from_pretrained(hf_dir)
        out = hf(
            ASCII_CAPTIONS,
            padding="max_length",
            truncation=True,
            max_length=77,
            return_tensors="np",
        )
        # HF pads with <|endoftext|>; OpenAI pads with 0.
        hf_ids = np.where(out["attention_mask"] == 1, out["input_ids"], 0)
        np.testing.assert_array_equal(hf_ids, ours(ASCII_CAPTIONS))


def test_hf_divergences_from_openai(ours, reference, hf_dir):
    """The divergences listed in clip_jax.data.tokenizer's docstring, pinned (OpenAI = open_clip)."""
    hf = transformers.CLIPTokenizer.from_pretrained(hf_dir)

    def hf_encode(text: str) -> list[int]:
        return hf(text, add_special_tokens=False)["input_ids"]

    diverging = [
        "fish &amp; chips",  # no HTML unescaping
        "âœ” No problems",  # no ftfy mojibake repair
        "ﬁne Ｔｏｋｙｏ it’s",  # no ligature / width / quote normalisation
        "a\x00b\x1b[31mc\x7f\ufeff",  # control characters, terminal escapes and BOM kept
        "a\x1cb",  # ftfy deletes it, HF keeps it
        "a\x85b",  # ftfy reads NEL as windows-1252 '…', HF as whitespace
        "ΣΑΣ",  # per-character lowercasing: final sigma
        "x <|endoftext|> y",  # HF's special-token spelling is special anywhere
        "x <end_of_text> y",  # OpenAI's is special when the regex sees it as a word
        "'ſ",  # IGNORECASE contraction in OpenAI's regex only
    ]
    for text in diverging:
        assert ours.encode(text) == reference.encode(text)
        assert hf_encode(text) != ours.encode(text), text
    assert EOT in hf_encode("x <|endoftext|> y") and EOT not in ours.encode("x <|endoftext|> y")
    assert EOT in ours.encode("x <end_of_text> y") and EOT not in hf_encode("x <end_of_text> y")
    assert hf.pad_token_id == EOT != ours.pad_token_id


@pytest.mark.parametrize("context_length", [1, 0, -5])
def test_rejects_too_short_context_length(ours, context_length):
    with pytest.raises(ValueError, match="context_length must be >= 2"):
        ours("a photo", context_length=context_length)


@pytest.mark.parametrize("context_length", [2.5, "77", None, True])
def test_rejects_non_int_context_length(ours, context_length):
    with pytest.raises(TypeError, match="context_length must be an int"):
        ours("a photo", context_length=context_length)


@pytest.mark.parametrize("texts", [None, 5, b"bytes", ["ok", None], ["ok", b"bytes"], [1, 2]])
def test_rejects_non_str_texts(ours, texts):
    with pytest.raises(TypeError, match="texts must"):
        ours(texts)


def test_a_missing_caption_in_a_column_is_named_by_position(ours):
    """A pandas column with an empty row (NaN) said only "got an element of type float": in
    millions of captions, the row is what the user needs."""
    pandas = pytest.importorskip("pandas")
    column = pandas.read_csv(io.StringIO("caption\na cat\n\nthree\n\"\"\n"),
                             skip_blank_lines=False)["caption"]
    assert column.isna().tolist() == [False, True, False, True]
    with pytest.raises(TypeError, match=r"got a float nan at position 1 \(a missing value"):
        ours(column.tolist())


def test_encode_and_decode_reject_bad_input(ours):
    with pytest.raises(TypeError, match="text must be str"):
        ours.encode(b"bytes")
    with pytest.raises(ValueError, match="token ids must be in"):
        ours.decode([49408])
    with pytest.raises(ValueError, match="token ids must be in"):
        ours.decode([-1])
    with pytest.raises(TypeError, match="1-D"):
        ours.decode(np.zeros((2, 3), dtype=np.int32))
    assert ours.decode([]) == ""
    assert ours.decode(np.array(ours.encode("A Cat"), dtype=np.int32)) == "a cat "


def test_accepts_any_iterable_of_str(ours, reference):
    texts = np.array(["a photo of a cat", "naïve café"])
    np.testing.assert_array_equal(ours(texts), reference_ids(reference, list(texts)))
    np.testing.assert_array_equal(ours(t for t in texts), ours(list(texts)))


def test_import_is_light():
    """Importing builds nothing and pulls in no torch."""
    code = (
        "import sys, clip_jax.data.tokenizer as t; "
        "assert t.default_tokenizer.cache_info().currsize == 0; "
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
