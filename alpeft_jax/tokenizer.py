"""CLIP byte-level BPE tokenizer in pure Python/NumPy.

    tok = Tokenizer.default()                       # the standard CLIP vocabulary (49,408 tokens)
    tok = Tokenizer.from_directory("clip-vit-b16")  # HF checkpoint: vocab.json + merges.txt (or tokenizer.json)
    ids = tok(["a photo of a cat"])                 # int32[B, 77]: [SOT] tokens [EOT] then padding

Two text-cleaning modes reproduce the two reference pipelines:
  * ``"openai"`` (OpenAI CLIP / open_clip ``SimpleTokenizer``): NFC, HTML unescaped twice, whitespace collapsed,
    lowercased; special-token strings in the text map to their ids. ``ftfy.fix_text`` is applied first only
    when asked for (``use_ftfy=True``), so ids never depend on whether ftfy happens to be installed.
    Padding id 0.
  * ``"hf"`` (transformers ``CLIPTokenizer``): NFC, whitespace collapsed, per-character lowercase, no HTML
    unescaping; only exact special/added-token strings in the raw text map to their ids (for LAION
    checkpoints that includes their pad token "!"). Padding with the directory's pad token (``<|endoftext|>``
    for the OpenAI checkpoints, "!" = id 0 for LAION's).
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import json
import os
import unicodedata
from collections.abc import Sequence
from typing import Any

import numpy as np
import regex

__all__ = ["Tokenizer", "bytes_to_unicode"]

SOT = "<|startoftext|>"
EOT = "<|endoftext|>"
DEFAULT_CONTEXT_LENGTH = 77
BPE_GZ_NAME = "bpe_simple_vocab_16e6.txt.gz"
_ASSET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "assets")
# The OpenAI vocabulary file holds more merges than the model uses: 49152 - 256 - 2 of them are kept.
_N_BPE_GZ_MERGES = 49152 - 256 - 2
_WORD_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_CLEAN_MODES = ("openai", "hf")


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """Reversible map from each byte 0..255 to a printable unicode character (GPT-2/CLIP byte-level BPE)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    # Printable bytes first, in byte order, then the remapped ones: this order defines the first 256 ids.
    return {b: table[b] for b in [*printable, *(b for b in range(256) if b not in printable)]}


@functools.lru_cache(maxsize=4)
def _read_bpe_gz(path: str) -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """Vocabulary and merges of an OpenAI-format ``bpe_simple_vocab_16e6.txt.gz`` file."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
    except (OSError, EOFError) as e:
        raise ValueError(f"Cannot read BPE vocabulary {path!r} ({e}); pass a bpe_simple_vocab_16e6.txt.gz file.") from e
    merges = tuple(_parse_merge(line, path) for line in lines[1 : _N_BPE_GZ_MERGES + 1])
    if len(merges) < _N_BPE_GZ_MERGES:
        raise ValueError(f"{path!r} has {len(merges)} merges, expected {_N_BPE_GZ_MERGES}; is it the CLIP BPE file?")
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + [SOT, EOT]
    return {t: i for i, t in enumerate(tokens)}, merges


def _parse_merge(line: str, source: str) -> tuple[str, str]:
    parts = line.split()
    if len(parts) != 2:
        raise ValueError(f"Malformed BPE merge {line!r} in {source!r}; each merge line must hold two symbols.")
    return parts[0], parts[1]


def _token_content(value: Any) -> str | None:
    """A special-token entry of a HF tokenizer config: a plain string or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _read_json(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class Tokenizer:
    """CLIP BPE tokenizer: text -> int32 ids with start/end-of-text tokens, padded to a fixed context length."""

    def __init__(
        self,
        encoder: dict[str, int],
        merges: Sequence[tuple[str, str]],
        *,
        sot: str = SOT,
        eot: str = EOT,
        pad_token_id: int = 0,
        context_length: int = DEFAULT_CONTEXT_LENGTH,
        clean: str = "openai",
        use_ftfy: bool = False,
        added_tokens: Sequence[str] = (),
        cache_size: int = 65536,
    ) -> None:
        if clean not in _CLEAN_MODES:
            raise ValueError(f"Unknown clean mode {clean!r}; use one of {_CLEAN_MODES}.")
        for name in (sot, eot, *added_tokens):
            if name not in encoder:
                raise ValueError(f"Special token {name!r} is not in the vocabulary; check the tokenizer files.")
        if context_length < 2:
            raise ValueError(f"context_length={context_length} leaves no room for SOT and EOT; use at least 2.")
        if use_ftfy and importlib.util.find_spec("ftfy") is None:
            raise ValueError("use_ftfy=True needs the ftfy package; `pip install ftfy` or pass use_ftfy=False.")
        self.encoder = dict(encoder)
        self.decoder = {i: t for t, i in self.encoder.items()}
        self.bpe_ranks = {tuple(m): r for r, m in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.sot, self.eot = sot, eot
        self.sot_token = self.encoder[sot]
        self.eot_token = self.encoder[eot]
        self.pad_token_id = int(pad_token_id)
        self.context_length = int(context_length)
        self.clean = clean
        self.use_ftfy = use_ftfy
        specials = "|".join(regex.escape(s) for s in (sot, eot))
        flags = regex.IGNORECASE if clean == "openai" else 0
        self._pattern = regex.compile(f"{specials}|{_WORD_PATTERN}", flags)
        # "hf" mode: exact special/added-token strings in the raw text become their ids, longest first.
        added = sorted({sot, eot, *added_tokens}, key=len, reverse=True)
        self._special_split = regex.compile("({})".format("|".join(regex.escape(s) for s in added)))
        self._words_only = regex.compile(_WORD_PATTERN)
        self._bpe = functools.lru_cache(maxsize=cache_size)(self._bpe_word)

    # ----------------------------------------------------------------------------------------- construction
    @classmethod
    def from_bpe_gz(cls, path: str | os.PathLike, **kwargs: Any) -> Tokenizer:
        """Tokenizer from an OpenAI/open_clip ``bpe_simple_vocab_16e6.txt.gz`` (OpenAI cleaning, pad id 0)."""
        encoder, merges = _read_bpe_gz(os.fspath(path))
        return cls(encoder, merges, **{"clean": "openai", "pad_token_id": 0, **kwargs})

    @classmethod
    def from_directory(cls, directory: str | os.PathLike, **kwargs: Any) -> Tokenizer:
        """Tokenizer of a HF CLIP checkpoint directory (vocab.json + merges.txt, or tokenizer.json), HF cleaning."""
        directory = os.fspath(directory)
        if not os.path.isdir(directory):
            raise ValueError(f"{directory!r} is not a directory; pass a HF CLIP checkpoint directory.")
        vocab_path, merges_path = os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt")
        fast = _read_json(os.path.join(directory, "tokenizer.json"))
        if os.path.isfile(vocab_path) and os.path.isfile(merges_path):
            encoder = _read_json(vocab_path)
            with open(merges_path, encoding="utf-8") as f:
                lines = f.read().split("\n")
            if lines and lines[0].startswith("#version"):
                lines = lines[1:]
            merges = [_parse_merge(line, merges_path) for line in lines if line.strip()]
        elif fast.get("model", {}).get("type") == "BPE":
            encoder = dict(fast["model"]["vocab"])
            merges = [
                tuple(m) if isinstance(m, list) else _parse_merge(m, "tokenizer.json") for m in fast["model"]["merges"]
            ]
        else:
            raise ValueError(
                f"{directory!r} has neither vocab.json + merges.txt nor a BPE tokenizer.json; "
                "pass a CLIP checkpoint directory."
            )
        for added in fast.get("added_tokens", []):
            encoder.setdefault(added["content"], added["id"])

        config = _read_json(os.path.join(directory, "tokenizer_config.json"))
        config.update(_read_json(os.path.join(directory, "special_tokens_map.json")))
        sot = _token_content(config.get("bos_token")) or SOT
        eot = _token_content(config.get("eos_token")) or EOT
        pad = _token_content(config.get("pad_token")) or EOT
        if pad not in encoder:
            raise ValueError(f"Pad token {pad!r} of {directory!r} is not in its vocabulary; fix tokenizer_config.json.")
        length = config.get("model_max_length")
        if not isinstance(length, int) or length > 100_000:
            text_config = _read_json(os.path.join(directory, "config.json")).get("text_config", {})
            length = text_config.get("max_position_embeddings", DEFAULT_CONTEXT_LENGTH)
        # transformers matches every special and added token verbatim in the raw text (LAION's pad "!" too).
        added = {pad, *(a["content"] for a in fast.get("added_tokens", []))}
        added |= {c for c in (_token_content(config.get("unk_token")),) if c in encoder}
        options = {
            "sot": sot,
            "eot": eot,
            "pad_token_id": encoder[pad],
            "context_length": length,
            "clean": "hf",
            "added_tokens": tuple(sorted(added)),
        }
        return cls(encoder, merges, **{**options, **kwargs})

    @classmethod
    def default(cls, **kwargs: Any) -> Tokenizer:
        """The standard CLIP vocabulary: the copy shipped with alpeft_jax, else the one in an installed open_clip."""
        path = default_bpe_path()
        if path is None:
            raise FileNotFoundError(
                f"No CLIP vocabulary found: {BPE_GZ_NAME} is missing from {_ASSET_DIR} and open_clip is not "
                "installed; reinstall alpeft_jax, `pip install open-clip-torch`, or use Tokenizer.from_bpe_gz(path)."
            )
        return cls.from_bpe_gz(path, **kwargs)

    # ---------------------------------------------------------------------------------------------- encoding
    @property
    def vocab_size(self) -> int:
        """Number of token ids (49,408 for CLIP)."""
        return len(self.encoder)

    def _bpe_word(self, word: str) -> tuple[str, ...]:
        """BPE symbols of one byte-encoded word; the last symbol carries the ``</w>`` end-of-word marker."""
        symbols = [*word[:-1], word[-1] + "</w>"]
        ranks = self.bpe_ranks
        while len(symbols) > 1:
            best, best_rank = None, None
            for pair in zip(symbols, symbols[1:], strict=False):
                rank = ranks.get(pair)
                if rank is not None and (best_rank is None or rank < best_rank):
                    best, best_rank = pair, rank
            if best is None:
                break
            first, second = best
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return tuple(symbols)

    def _clean(self, text: str) -> str:
        """Normalise text the way the reference pipeline of this tokenizer's mode does."""
        if self.clean == "openai":
            if self.use_ftfy:
                import ftfy

                text = ftfy.fix_text(text)
            text = html.unescape(html.unescape(unicodedata.normalize("NFC", text)))
            return " ".join(text.split()).lower()
        text = regex.sub(r"\s+", " ", unicodedata.normalize("NFC", text))
        return "".join(c.lower() for c in text)  # per character, as the HF normaliser does (no final sigma)

    def _encode_words(self, text: str, specials_as_ids: bool) -> list[int]:
        ids: list[int] = []
        for word in self._pattern.findall(text):
            if word in (self.sot, self.eot):
                if specials_as_ids:
                    ids.append(self.encoder[word])
                    continue
                # HF's byte-level pre-tokenizer splits special-token text made by lowercasing into words.
                parts = self._words_only.findall(word)
            else:
                parts = [word]
            for part in parts:
                encoded = "".join(self.byte_encoder[b] for b in part.encode("utf-8"))
                ids.extend(self.encoder[s] for s in self._bpe(encoded))
        return ids

    def encode(self, text: str) -> list[int]:
        """BPE token ids of one text, without SOT/EOT."""
        if not isinstance(text, str):
            raise TypeError(f"Tokenizer.encode takes a str, got {type(text).__name__}.")
        if self.clean == "openai":
            return self._encode_words(self._clean(text), specials_as_ids=True)
        ids: list[int] = []
        for i, part in enumerate(self._special_split.split(text)):
            if i % 2:  # an exact special-token string in the raw text
                ids.append(self.encoder[part])
            elif part:
                ids.extend(self._encode_words(self._clean(part), specials_as_ids=False))
        return ids

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
        """Token ids int32[B, context_length]: [SOT] tokens [EOT] then padding; too-long texts end in EOT."""
        if isinstance(texts, str):
            texts = [texts]
        length = self.context_length if context_length is None else int(context_length)
        if length < 2:
            raise ValueError(f"context_length={length} leaves no room for SOT and EOT; use at least 2.")
        out = np.full((len(texts), length), self.pad_token_id, dtype=np.int32)
        for row, text in enumerate(texts):
            ids = [self.sot_token, *self.encode(text)[: length - 2], self.eot_token]
            out[row, : len(ids)] = ids
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids: SOT dropped, everything from the first EOT on (padding included) ignored."""
        data = bytearray()
        for i in ids:
            token = self.decoder[int(i)]
            if int(i) == self.sot_token:
                continue
            if int(i) == self.eot_token:
                break
            end_of_word = token.endswith("</w>")
            data.extend(self.byte_decoder[c] for c in (token[:-4] if end_of_word else token))
            if end_of_word:
                data.extend(b" ")
        return data.decode("utf-8", errors="replace").strip()

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, context_length={self.context_length}, "
            f"clean={self.clean!r}, pad_token_id={self.pad_token_id})"
        )


def default_bpe_path() -> str | None:
    """Path of the standard CLIP BPE file: the shipped asset, else open_clip's copy, else None."""
    shipped = os.path.join(_ASSET_DIR, BPE_GZ_NAME)
    if os.path.isfile(shipped):
        return shipped
    spec = importlib.util.find_spec("open_clip")  # located, not imported: open_clip pulls in torch
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = os.path.join(location, BPE_GZ_NAME)
        if os.path.isfile(candidate):
            return candidate
    return None
