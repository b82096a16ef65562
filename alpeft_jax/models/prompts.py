"""Learnable text prompts (CoOp) and the frozen prompts of LoRA mode, for the CLIP text tower.

A prompt for class c is the token sequence of ``"X X ... X {name}."`` (``n_ctx`` placeholders) whose placeholder
embeddings are replaced by learned context vectors, placed before the class name ("end", CoOp's default), around
it ("middle") or after it ("front"). The frozen token embeddings and the placement are computed once; the
trainable tree is only the context, ``[K, n_ctx, W]`` (class-specific) or ``[n_ctx, W]`` (shared).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alpeft_jax import schema


@dataclasses.dataclass(frozen=True)
class PromptConfig:
    """CoOp prompt settings; the defaults are `config.base().adapt.prompt`'s (declared in `alpeft_jax.schema`)."""

    n_ctx: int = schema.default("adapt.prompt.n_ctx")
    class_specific: bool = schema.default("adapt.prompt.class_specific")  # CoOp's CSC: one context per class
    init: str = schema.default("adapt.prompt.init")  # words to initialise the context from; "" -> N(0, 0.02^2)
    position: str = schema.default("adapt.prompt.position")  # class token position: "end" | "middle" | "front"
    init_std: float = 0.02

    def __post_init__(self) -> None:
        schema.raise_problems(schema.validate(self, "adapt.prompt"))


def class_prompt(name: str, n_ctx: int, placeholder: str = "X") -> str:
    """The text ``"X X ... X name."`` of a class (underscores become spaces)."""
    name = name.replace("_", " ")
    return " ".join([placeholder] * n_ctx + [name]) + "." if n_ctx else f"{name}."


def _check_length(tokenizer: Any, class_names: Sequence[str], n_ctx: int) -> None:
    context = tokenizer.context_length
    longest = max(class_names, key=lambda c: len(tokenizer.encode(c.replace("_", " "))))
    need = 1 + n_ctx + len(tokenizer.encode(longest.replace("_", " ") + ".")) + 1
    if need > context:
        raise ValueError(
            f"Prompt too long: {n_ctx} context tokens + class name {longest!r} need {need} tokens but the text "
            f"context holds {context}; lower prompt.n_ctx to at most {n_ctx - (need - context)}."
        )


class PromptLearner:
    """CoOp context vectors over a frozen CLIP text tower: `init(rng)` -> ctx, `embeddings(ctx)` -> [K, L, W]."""

    def __init__(self, backbone: Any, class_names: Sequence[str], config: PromptConfig) -> None:
        tok = backbone.tokenizer
        if tok is None:
            raise ValueError("Prompt learning needs a CLIP backbone with a tokenizer.")
        self.config = config
        self.class_names = list(class_names)
        init_words = config.init.replace("_", " ").strip()
        n_ctx = len(tok.encode(init_words)) if init_words else config.n_ctx
        self.n_ctx = n_ctx
        _check_length(tok, self.class_names, n_ctx)
        ids = tok([class_prompt(c, n_ctx) for c in self.class_names])  # [K, L]
        self.ids = ids
        self.eot_index = np.asarray([int(np.flatnonzero(row == tok.eot_token)[0]) for row in ids], np.int32)
        frozen = backbone.apply("embed_tokens", jnp.asarray(ids))
        frozen = frozen[0] if isinstance(frozen, tuple) else frozen
        self.frozen = jnp.asarray(frozen, jnp.float32)  # [K, L, W]
        self.width = int(self.frozen.shape[-1])
        name_lens = [len(tok.encode(c.replace("_", " "))) for c in self.class_names]
        self.is_ctx, self.ctx_idx, self.src_idx = _placement(ids.shape[1], n_ctx, name_lens, config.position)
        self._init_ctx = None
        if init_words:
            init_ids = tok([init_words])
            emb = backbone.apply("embed_tokens", jnp.asarray(init_ids))
            emb = emb[0] if isinstance(emb, tuple) else emb
            self._init_ctx = jnp.asarray(emb[0, 1 : 1 + n_ctx], jnp.float32)  # [n_ctx, W]

    @property
    def num_classes(self) -> int:
        """Number of classes (prompts)."""
        return len(self.class_names)

    def init(self, rng: jax.Array) -> jax.Array:
        """Fresh context vectors: [K, n_ctx, W] if class-specific else [n_ctx, W]."""
        shape: tuple[int, ...] = (self.n_ctx, self.width)
        if self.config.class_specific:
            shape = (self.num_classes, *shape)
        if self._init_ctx is not None:
            return jnp.broadcast_to(self._init_ctx, shape).astype(jnp.float32)
        return self.config.init_std * jax.random.normal(rng, shape, jnp.float32)

    def embeddings(self, ctx: jax.Array) -> jax.Array:
        """Token embeddings [K, L, W] of every class prompt with the context inserted."""
        k = self.num_classes
        ctx = ctx if ctx.ndim == 3 else jnp.broadcast_to(ctx, (k, *ctx.shape))
        from_ctx = jnp.take_along_axis(ctx, jnp.asarray(self.ctx_idx)[..., None], axis=1)
        from_frozen = jnp.take_along_axis(self.frozen, jnp.asarray(self.src_idx)[..., None], axis=1)
        return jnp.where(jnp.asarray(self.is_ctx)[..., None], from_ctx.astype(self.frozen.dtype), from_frozen)


def _placement(
    length: int, n_ctx: int, name_lens: Sequence[int], position: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class and token position: is it a context vector, which one, else which frozen token to copy."""
    k = len(name_lens)
    is_ctx = np.zeros((k, length), bool)
    ctx_idx = np.zeros((k, length), np.int32)
    src_idx = np.tile(np.arange(length, dtype=np.int32), (k, 1))  # default: the same frozen position
    for c, n_name in enumerate(name_lens):
        name_src = np.arange(1 + n_ctx, 1 + n_ctx + n_name)  # where the name sits in "X..X name."
        if position == "end":
            slots = np.arange(1, 1 + n_ctx)
            is_ctx[c, slots] = True
            ctx_idx[c, slots] = np.arange(n_ctx)
        elif position == "middle":
            half = n_ctx // 2
            is_ctx[c, 1 : 1 + half] = True
            ctx_idx[c, 1 : 1 + half] = np.arange(half)
            src_idx[c, 1 + half : 1 + half + n_name] = name_src
            rest = np.arange(1 + half + n_name, 1 + n_ctx + n_name)
            is_ctx[c, rest] = True
            ctx_idx[c, rest] = np.arange(half, n_ctx)
        else:  # front
            src_idx[c, 1 : 1 + n_name] = name_src
            slots = np.arange(1 + n_name, 1 + n_name + n_ctx)
            is_ctx[c, slots] = True
            ctx_idx[c, slots] = np.arange(n_ctx)
    return is_ctx, ctx_idx, src_idx


class FixedPrompts:
    """The frozen prompts of LoRA mode: token ids of ``"X"*n + " {name}."`` per class (or a template)."""

    def __init__(
        self, backbone: Any, class_names: Sequence[str], n_placeholders: int = 16, template: str | None = None
    ) -> None:
        tok = backbone.tokenizer
        if tok is None:
            raise ValueError("Text prompts need a CLIP backbone with a tokenizer.")
        if template:
            texts = [template.format(c.replace("_", " ")) for c in class_names]
        else:
            _check_length(tok, class_names, n_placeholders)
            texts = [class_prompt(c, n_placeholders) for c in class_names]
        self.texts = texts
        self.ids = tok(texts)
