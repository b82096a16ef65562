"""A frozen backbone plus its trainable parts, as one logits function for training, scoring and evaluation.

Modes (``AdaptConfig.mode``):
  * ``"prompt"`` — CLIP with CoOp context vectors; the image tower is frozen.
  * ``"lora"``   — LoRA on the targeted layers. CLIP classifies with frozen "X"*16 + class-name prompts through
                   the (adapted) text tower; other backbones add a linear head.
  * ``"linear"`` — a linear probe on frozen image features (optionally initialised zero-shot for CLIP).

The trainable tree is a dict with some of ``lora``, ``prompt``, ``head``. Whatever the image tower does not
adapt is a *frozen prefix* whose output can be cached once per pool (`input_kind`):
  * ``"features"`` — the image tower is frozen: cache the image embedding;
  * ``"hidden"``   — LoRA touches image blocks ``cache_block`` and above only: cache the hidden state there;
  * ``"images"``   — nothing to cache.
`prefix(images)` computes the cacheable input; `logits(trainable, inputs, kind=...)` the rest.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp

from alpeft_jax import schema
from alpeft_jax.models import heads, lora, prompts
from alpeft_jax.utils import flatten

Trainable = dict[str, Any]
InputKind = Literal["images", "hidden", "features"]  # what the model reads: see the module docstring
_BLOCK = re.compile(r"(?:^|/)(?:block|blocks)_(\d+)(?:/|$)")
# Image-tower parameter prefix per backbone family ("" = the whole model is the image tower).
IMAGE_PREFIX = {"clip": "img/", "dinov2": "", "efficientnet": ""}


@dataclasses.dataclass(frozen=True)
class AdaptConfig:
    """How a backbone is adapted; the defaults are `config.base().adapt`'s (declared in `alpeft_jax.schema`)."""

    mode: str = schema.default("adapt.mode")  # "lora" | "prompt" | "linear"
    lora: lora.LoraConfig | None = dataclasses.field(default_factory=lora.LoraConfig)  # None: LoraConfig()
    prompt: prompts.PromptConfig | None = dataclasses.field(default_factory=prompts.PromptConfig)  # None: idem
    head: str = schema.default("adapt.head")  # "auto" | "none" | "linear" | "zeroshot"
    n_placeholders: int = schema.default("adapt.n_placeholders")  # the frozen "X" tokens of CLIP's LoRA-mode prompts
    template: str = schema.default("adapt.template")  # instead of "X"*n: e.g. "a photo of a {}."
    head_scale: float = schema.default("adapt.head_scale")  # >0: a linear head reads L2-normalised features x this

    def __post_init__(self) -> None:
        schema.raise_problems(schema.validate(self, "adapt"))

    @classmethod
    def from_config(cls, a: Any, family: str) -> AdaptConfig:
        """The AdaptConfig of a run config's `adapt` section for a backbone of `family` (default LoRA targets)."""
        targets = tuple(t.strip() for t in a.lora.targets.split(",") if t.strip())
        if not targets and a.mode == "lora":
            if family == "efficientnet":
                raise ValueError(
                    "EfficientNet needs explicit LoRA targets, e.g. --config.adapt.lora.targets="
                    "'blocks_1[3-5]/.*(expand|project)_conv'."
                )
            targets = lora.TOWER_TARGETS["both" if family != "clip" else a.lora.towers]
        elif not targets:
            targets = lora.TOWER_TARGETS["both"]  # unused outside lora mode
        lora_cfg = lora.LoraConfig(a.lora.rank, a.lora.alpha, a.lora.dropout, a.lora.scale_mode, targets)
        prompt_cfg = prompts.PromptConfig(a.prompt.n_ctx, a.prompt.class_specific, a.prompt.init, a.prompt.position)
        return cls(a.mode, lora_cfg, prompt_cfg, a.head, a.n_placeholders, a.template, float(a.head_scale))


class AdaptedModel:
    """Backbone + adaptation: `init(rng)` -> trainable tree; `logits(trainable, inputs, kind=...)`."""

    def __init__(self, backbone: Any, class_names: Sequence[str], config: AdaptConfig) -> None:
        self.backbone = backbone
        self.class_names = list(class_names)
        self.config = config
        self.num_classes = len(self.class_names)
        is_clip = backbone.has_text
        # prompts and the text-tower or zero-shot heads need CLIP: the rules preflight checks (schema.validate)
        schema.raise_problems(schema.validate(config, "adapt", family="clip" if is_clip else backbone.family))
        mode, head = config.mode, config.head
        if head == "auto":
            head = "none" if (is_clip and mode in ("lora", "prompt")) else ("zeroshot" if is_clip else "linear")
        self.head_kind = head
        self.lora_config = (config.lora or lora.LoraConfig()) if mode == "lora" else None
        self.prompt_learner = None
        self.text_ids = None
        if mode == "prompt":
            prompt_config = config.prompt or prompts.PromptConfig()
            self.prompt_learner = prompts.PromptLearner(backbone, self.class_names, prompt_config)
        elif is_clip and head in ("none", "zeroshot"):
            fixed = prompts.FixedPrompts(
                backbone,
                self.class_names,
                config.n_placeholders,
                config.template or ("a photo of a {}." if head == "zeroshot" else None),
            )
            self.text_ids = jnp.asarray(fixed.ids)
        self._lora_modules: dict[str, tuple[int, ...]] = {}
        if self.lora_config is not None:
            self._lora_modules = lora.target_modules(backbone.params, self.lora_config.targets)
        prefix = IMAGE_PREFIX.get(backbone.family, "")
        image_targets = [m for m in self._lora_modules if m.startswith(prefix)]
        self.text_adapted = mode == "prompt" or any(m.startswith("txt/") for m in self._lora_modules)
        self.input_kind: InputKind
        self.cache_block: int | None
        if not image_targets:
            self.input_kind, self.cache_block = "features", None
        else:
            found = [_BLOCK.search(m[len(prefix) :]) for m in image_targets]
            blocks = [int(b.group(1)) for b in found if b is not None]
            if len(blocks) == len(found) and min(blocks) > 0:
                self.input_kind, self.cache_block = "hidden", min(blocks)
            else:
                self.input_kind, self.cache_block = "images", None
        self._frozen_text = None
        if self.text_ids is not None and not self.text_adapted:
            self._frozen_text = backbone.encode_text(self.text_ids)  # computed once: nothing in it trains

    # ----------------------------------------------------------------------------------------------
    @property
    def feature_dim(self) -> int:
        """Size of the image embedding fed to a head."""
        return self.backbone.embed_dim

    def init(self, rng: jax.Array) -> Trainable:
        """A fresh trainable tree (new LoRA factors / context / head) — the authors re-initialise every round."""
        k_lora, k_prompt, k_head = jax.random.split(rng, 3)
        out: Trainable = {}
        if self.lora_config is not None:
            out["lora"] = lora.init(k_lora, self.backbone.params, self.lora_config)
        if self.prompt_learner is not None:
            out["prompt"] = self.prompt_learner.init(k_prompt)
        if self.head_kind == "linear":
            out["head"] = heads.init_linear(k_head, self.feature_dim, self.num_classes)
        elif self.head_kind == "zeroshot":
            text = self.text_features(out)
            out["head"] = heads.init_from_text(text, jnp.exp(self.backbone.params["logit_scale"]))
        return out

    def describe(self, trainable: Trainable) -> list[tuple[str, tuple[int, ...]]]:
        """Names and shapes of the trainable parameters."""
        return [(k, tuple(v.shape)) for k, v in sorted(flatten(trainable).items())]

    # ----------------------------------------------------------------------------------------------
    def _apply(self, trainable: Trainable, fn: Any, *args: Any, rng: jax.Array | None, train: bool) -> Any:
        return lora.apply(
            self.backbone.model,
            self.backbone.params,
            trainable.get("lora"),
            self.lora_config,
            *args,
            method=fn,
            rng=rng,
            train=train,
        )

    def prefix(self, images: jax.Array, params: Any = None) -> jax.Array:
        """The cacheable frozen part for `input_kind`: image features, the hidden state, or the images.

        `params` (default: the backbone's) lets a jitted caller pass the frozen weights as an argument.
        """
        images = jnp.asarray(images, self.backbone.dtype)
        variables = {"params": self.backbone.params if params is None else params}
        if self.input_kind == "features":
            return self.backbone.model.apply(variables, images, method="encode_image")[0]
        if self.input_kind == "hidden":
            stop = self.cache_block

            def fn(m: Any, x: jax.Array) -> jax.Array:
                return m.image_blocks(m.image_stem(x), 0, stop)

            return self.backbone.model.apply(variables, images, method=fn)
        return images

    def image_features(
        self,
        trainable: Trainable,
        inputs: jax.Array,
        kind: InputKind,
        *,
        rng: jax.Array | None = None,
        train: bool = False,
    ) -> jax.Array:
        """The (adapted) image embedding from images, a cached hidden state or cached features."""
        if kind == "features":
            return inputs
        if kind == "hidden":
            start = self.cache_block

            def fn(m: Any, h: jax.Array) -> jax.Array:
                return m.image_head(m.image_blocks(h, start, None))[0]

            return self._apply(trainable, fn, inputs, rng=rng, train=train)
        return self._apply(trainable, "encode_image", inputs, rng=rng, train=train)[0]

    def text_features(self, trainable: Trainable, *, rng: jax.Array | None = None, train: bool = False) -> jax.Array:
        """Class text embeddings [K, D] from the learned prompts or the fixed prompts (CLIP)."""
        if self._frozen_text is not None:
            return self._frozen_text
        if self.prompt_learner is not None:
            emb = self.prompt_learner.embeddings(trainable["prompt"])
            eot = jnp.asarray(self.prompt_learner.eot_index)

            def fn(m: Any, e: jax.Array, i: jax.Array) -> jax.Array:
                return m.encode_text(embeddings=e, eot_index=i)[0]

            return self._apply(trainable, fn, emb, eot, rng=rng, train=train)

        def fn_ids(m: Any, ids: jax.Array) -> jax.Array:
            return m.encode_text(ids)[0]

        return self._apply(trainable, fn_ids, self.text_ids, rng=rng, train=train)

    def classifier(self, trainable: Trainable) -> tuple[heads.Head, bool, float]:
        """The map from image embeddings f to logits, `(head, normalize, scale)`: logits =
        (scale * f / |f| if normalize else f) @ head["kernel"] + head["bias"]; CLIP's text classifier included
        (its kernel: the class text embeddings, L2-normalised, times the logit scale)."""
        if self.head_kind in ("linear", "zeroshot"):
            cosine = self.head_kind == "linear" and self.config.head_scale > 0
            return trainable["head"], cosine or self.head_kind == "zeroshot", self.config.head_scale if cosine else 1.0
        text = self.text_features(trainable).astype(jnp.float32)
        t = text / jnp.linalg.norm(text, axis=-1, keepdims=True)
        kernel = (jnp.exp(self.backbone.params["logit_scale"]).astype(jnp.float32) * t).T
        return {"kernel": kernel, "bias": jnp.zeros((t.shape[0],), jnp.float32)}, True, 1.0

    def logits(
        self,
        trainable: Trainable,
        inputs: jax.Array,
        kind: InputKind | None = None,
        *,
        rng: jax.Array | None = None,
        train: bool = False,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Class logits float32[B, K] and aux (`features`: the image embedding) from inputs of `kind`."""
        kind = kind or "images"
        k_img, k_txt = (None, None) if rng is None else jax.random.split(rng)
        feats = self.image_features(trainable, inputs, kind, rng=k_img, train=train)
        if self.head_kind in ("linear", "zeroshot"):
            cosine = self.head_kind == "linear" and self.config.head_scale > 0
            logits = heads.apply(
                trainable["head"],
                feats,
                normalize=cosine or self.head_kind == "zeroshot",
                scale=self.config.head_scale if cosine else 1.0,
            )
        else:
            text = self.text_features(trainable, rng=k_txt, train=train).astype(jnp.float32)
            f = feats.astype(jnp.float32)
            f = f / jnp.linalg.norm(f, axis=-1, keepdims=True)
            t = text / jnp.linalg.norm(text, axis=-1, keepdims=True)
            logits = jnp.exp(self.backbone.params["logit_scale"]) * f @ t.T
        return logits.astype(jnp.float32), {"features": feats.astype(jnp.float32)}
