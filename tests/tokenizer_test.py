"""CLIP tokenizer against transformers' CLIPTokenizer and open_clip's SimpleTokenizer on the real CLIP vocabulary."""

import gzip
import importlib.util
import json
import os
import shutil
import unicodedata

import numpy as np
import pytest
from _required import require, require_open_clip

from alpeft_jax.tokenizer import Tokenizer, default_bpe_path

transformers = pytest.importorskip("transformers")

BPE_GZ = default_bpe_path()
pytestmark = pytest.mark.skipif(BPE_GZ is None, reason="no CLIP BPE vocabulary available")

# Strings both reference pipelines treat alike (no HTML entities, special-token text or word-final sigma).
COMMON = [
    "a photo of a cat",
    "a photo of a cat.",
    "A Photo Of A CAT!!",
    "Héllo Wörld, café naïve façade",
    "e\u0301cole de\u0301composée",  # decomposed accents: NFC composes them
    "日本語のテキスト 中文字符 한국어 텍스트",
    "emoji 😀🐱‍👤 👍🏽 🇫🇷",
    "Hello, world!!! ... ?! --- (parens) [brackets] {braces} @#$%^&*",
    "3.14159 and 1,000,000 42nd 2024-11-26 ½ ² ٣",
    "it's they're we've I'm you'll he'd don't IT'S LOUD 'quoted'",
    "multiple   spaces\n\nnew\tlines \r\n end  ",
    "   leading and trailing   ",
    "",
    "   \n\t ",
    "snake_case-words and hyphen-ated/slashed",
    "İstanbul ＡＢＣ fullwidth",
    "a\u00a0b\u2003c zero\u200bwidth",
    "مرحبا بالعالم नमस्ते दुनिया",
    "supercalifragilisticexpialidocious " + "x" * 120,
    "X X X X X X X X X X X X X X X X a dog.",
    "a photo of a stop sign, a type of road sign; 50% off $9.99 #1",
]
# Strings where transformers' normaliser and OpenAI's cleaning differ.
HF_ONLY = [
    "fish &amp; chips &lt;b&gt; &quot;q&quot; &#39;s",
    "ΟΔΟΣ ΣΟΦΊΑΣ",
    "before <|endoftext|> after",
    "<|startoftext|>x<|endoftext|>",
    "<|EndOfText|> mixed case",
    "x<|ENDOFTEXT|>!! y!<|StartOfText|>z",
]
LONG = " ".join(f"word{i} and, more" for i in range(60))


def _bytes_to_unicode():
    # The GPT-2/CLIP byte table, written out independently of the code under test.
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """HF-format tokenizer directories derived from the CLIP BPE file: vocab.json/merges.txt and tokenizer.json."""
    root = tmp_path_factory.mktemp("clip_tok")
    lines = gzip.open(BPE_GZ, "rt", encoding="utf-8").read().split("\n")
    merges = [line for line in lines[1 : 49152 - 256 - 2 + 1]]
    chars = _bytes_to_unicode()
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    files = root / "files"
    files.mkdir()
    (files / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (files / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    hf = transformers.CLIPTokenizer.from_pretrained(str(files))
    hf.model_max_length = 77
    hf.save_pretrained(str(files))  # adds tokenizer.json + tokenizer_config.json next to vocab.json/merges.txt
    fast = root / "fast"
    hf.save_pretrained(str(fast))
    laion = root / "laion"
    shutil.copytree(files, laion)
    config = json.loads((laion / "tokenizer_config.json").read_text())
    config["pad_token"] = "!"  # the LAION CLIP checkpoints pad with "!" (id 0)
    (laion / "tokenizer_config.json").write_text(json.dumps(config))
    return {"files": str(files), "fast": str(fast), "laion": str(laion)}


@pytest.fixture(scope="module")
def hf_tok(dirs):
    return transformers.CLIPTokenizer.from_pretrained(dirs["files"])


def _hf_ids(hf, texts, length=77):
    out = hf(texts, truncation=True, max_length=length, padding="max_length")["input_ids"]
    return np.asarray(out, np.int64)


def test_known_ids_of_a_photo_of_a_cat():
    tok = Tokenizer.default()
    # Ids printed in OpenAI's CLIP README-era notebooks for this prompt.
    assert tok.encode("a photo of a cat") == [320, 1125, 539, 320, 2368]
    assert (tok.sot_token, tok.eot_token, tok.vocab_size, tok.context_length) == (49406, 49407, 49408, 77)
    assert tok.pad_token_id == 0


@pytest.mark.parametrize("key", ["files", "fast"])
def test_from_directory_matches_transformers(dirs, hf_tok, key):
    tok = Tokenizer.from_directory(dirs[key])
    texts = COMMON + HF_ONLY + [LONG]
    got = tok(texts)
    assert got.dtype == np.int32 and got.shape == (len(texts), 77)
    assert tok.pad_token_id == hf_tok.pad_token_id == 49407
    want = _hf_ids(hf_tok, texts)
    for text, g, w in zip(texts, got, want, strict=True):
        np.testing.assert_array_equal(g, w, err_msg=repr(text))
    for text in texts[:-1]:
        assert tok.encode(text) == hf_tok(text, add_special_tokens=False)["input_ids"], repr(text)


def test_fast_alias_matches(dirs):
    fast_cls = getattr(transformers, "CLIPTokenizerFast", None)
    if fast_cls is None:
        pytest.skip("transformers has no CLIPTokenizerFast")
    hf = fast_cls.from_pretrained(dirs["files"])
    tok = Tokenizer.from_directory(dirs["files"])
    np.testing.assert_array_equal(tok(COMMON + HF_ONLY), _hf_ids(hf, COMMON + HF_ONLY))


def test_truncation_keeps_eot(dirs, hf_tok):
    tok = Tokenizer.from_directory(dirs["files"])
    ids = tok(LONG)
    assert len(tok.encode(LONG)) > 200
    assert ids[0, 0] == tok.sot_token and ids[0, -1] == tok.eot_token
    assert np.count_nonzero(ids[0] == tok.eot_token) == 1
    np.testing.assert_array_equal(ids, _hf_ids(hf_tok, [LONG]))
    short = tok([LONG, "a cat"], context_length=10)
    np.testing.assert_array_equal(short, _hf_ids(hf_tok, [LONG, "a cat"], length=10))


def test_laion_style_pad_token(dirs):
    hf = transformers.CLIPTokenizer.from_pretrained(dirs["laion"])
    tok = Tokenizer.from_directory(dirs["laion"])
    assert tok.pad_token_id == hf.pad_token_id == 0
    np.testing.assert_array_equal(tok(COMMON), _hf_ids(hf, COMMON))


def test_from_bpe_gz_matches_transformers(hf_tok):
    tok = Tokenizer.from_bpe_gz(BPE_GZ)
    texts = COMMON + [LONG]
    got = tok(texts)
    for text, row in zip(texts, got, strict=True):
        want = hf_tok(text, truncation=True, max_length=77)["input_ids"]  # unpadded
        assert row[: len(want)].tolist() == want, repr(text)
        assert not row[len(want) :].any(), repr(text)  # the OpenAI format pads with 0


def test_openai_cleaning_differs_from_hf_where_expected(hf_tok):
    tok = Tokenizer.from_bpe_gz(BPE_GZ)
    # OpenAI unescapes HTML: "&amp;" is "&" there, five tokens in transformers.
    assert tok.encode("fish &amp; chips") == tok.encode("fish & chips")
    assert hf_tok("fish &amp; chips", add_special_tokens=False)["input_ids"] != tok.encode("fish & chips")
    # OpenAI maps special-token text to its id after lowercasing.
    assert tok.encode("<|EndOfText|>") == [49407]


def _load_open_clip_tokenizer():
    require_open_clip()
    spec = importlib.util.find_spec("open_clip")
    path = os.path.join(spec.submodule_search_locations[0], "tokenizer.py")
    module_spec = importlib.util.spec_from_file_location("_open_clip_tokenizer_reference", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)  # needs ftfy, regex and torch, not the rest of open_clip
    except ImportError as e:
        require(False, f"open_clip's tokenizer.py cannot be loaded on its own ({e}): run `make install`")
    return module


@pytest.fixture(scope="module")
def open_clip_module():
    return _load_open_clip_tokenizer()


def test_matches_open_clip_simple_tokenizer(open_clip_module):
    import ftfy

    ref = open_clip_module.SimpleTokenizer(BPE_GZ)
    texts = COMMON + [LONG, "fish &amp; chips &amp;amp; &lt;b&gt;", "ΟΔΟΣ ΣΟΦΊΑΣ", "“curly” quotes ﬁ"]
    with_ftfy = Tokenizer.from_bpe_gz(BPE_GZ, use_ftfy=True)
    np.testing.assert_array_equal(with_ftfy(texts), ref(texts).numpy())
    # Without ftfy the ids equal open_clip's wherever ftfy changes nothing beyond NFC.
    plain = Tokenizer.from_bpe_gz(BPE_GZ)
    same = [t for t in texts if ftfy.fix_text(t) == unicodedata.normalize("NFC", t)]
    assert len(same) >= len(COMMON) - 2
    np.testing.assert_array_equal(plain(same), ref(same).numpy())
    assert ref.encode("“curly”") != plain.encode("“curly”")  # ftfy straightens quotes; plain mode does not


def test_decode_matches_transformers(dirs, hf_tok):
    tok = Tokenizer.from_directory(dirs["files"])
    for text in ["a photo of a cat.", "Héllo 日本 😀 it's", "3.14 & more"]:
        ids = tok(text)[0]
        assert tok.decode(ids) == hf_tok.decode(ids.tolist(), skip_special_tokens=True)


def test_batch_shapes_and_errors(dirs):
    tok = Tokenizer.default()
    assert tok([]).shape == (0, 77)
    np.testing.assert_array_equal(tok(""), [[49406, 49407] + [0] * 75])
    assert tok(["a", "b c"], context_length=5).shape == (2, 5)
    with pytest.raises(ValueError, match="context_length"):
        tok("a", context_length=1)
    with pytest.raises(ValueError, match="clean mode"):
        Tokenizer.from_bpe_gz(BPE_GZ, clean="basic")
    with pytest.raises(ValueError, match="not a directory"):
        Tokenizer.from_directory(os.path.join(dirs["files"], "missing"))
    with pytest.raises(ValueError, match="vocab.json"):
        Tokenizer.from_directory(os.path.dirname(dirs["files"]))
    with pytest.raises(TypeError, match="str"):
        tok.encode(3)


def test_default_uses_shipped_vocabulary():
    shipped = os.path.join(
        os.path.dirname(importlib.util.find_spec("alpeft_jax").origin), "data", "assets", "bpe_simple_vocab_16e6.txt.gz"
    )
    assert os.path.isfile(shipped)
    assert default_bpe_path() == shipped
