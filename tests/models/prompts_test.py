"""CoOp prompts (alpeft_jax.models.prompts) with the real CLIP vocabulary: placement, text encoding, init, errors."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alpeft_jax.models import prompts
from alpeft_jax.tokenizer import Tokenizer

NAMES = ["cat", "golden_retriever", "hot-air balloon", "sea lion"]  # 1, 2, 4 and 2 BPE tokens


def _table(backbone) -> np.ndarray:
    return np.asarray(backbone.params["txt"]["token_embed"]["embedding"])


def _reference(backbone, name: str, ctx: np.ndarray, position: str) -> tuple[np.ndarray, int]:
    """Prompt embeddings built directly: [SOT] + layout of (context, name tokens) + "." + [EOT] + padding."""
    tok = backbone.tokenizer
    table = _table(backbone)
    name_ids = tok.encode(name.replace("_", " "))
    n = len(ctx)
    slots = {
        "end": [*["C"] * n, *name_ids],
        "front": [*name_ids, *["C"] * n],
        "middle": [*["C"] * (n // 2), *name_ids, *["C"] * (n - n // 2)],
    }[position]
    dot = tok.encode(".")
    seq = [tok.sot_token, *slots, *dot, tok.eot_token]
    seq += [tok.pad_token_id] * (tok.context_length - len(seq))
    rows, c = [], 0
    for t in seq:
        if t == "C":
            rows.append(ctx[c])
            c += 1
        else:
            rows.append(table[t])
    return np.stack(rows), 1 + len(slots) + len(dot)


@pytest.mark.parametrize("position", ["end", "middle", "front"])
@pytest.mark.parametrize("n_ctx", [4, 5])
def test_placement_matches_direct_construction(vocab_clip, position, n_ctx):
    cfg = prompts.PromptConfig(n_ctx=n_ctx, position=position)
    learner = prompts.PromptLearner(vocab_clip, NAMES, cfg)
    ctx = np.asarray(learner.init(jax.random.key(0)))
    assert ctx.shape == (len(NAMES), n_ctx, 16)
    emb = np.asarray(learner.embeddings(jnp.asarray(ctx)))
    assert emb.shape == (len(NAMES), 77, 16)
    for c, name in enumerate(NAMES):
        ref, eot = _reference(vocab_clip, name, ctx[c], position)
        np.testing.assert_array_equal(emb[c], ref)
        assert learner.eot_index[c] == eot


def test_shared_context_is_broadcast(vocab_clip):
    learner = prompts.PromptLearner(vocab_clip, NAMES, prompts.PromptConfig(n_ctx=3, class_specific=False))
    ctx = np.asarray(learner.init(jax.random.key(1)))
    assert ctx.shape == (3, 16)
    assert np.std(ctx) == pytest.approx(0.02, rel=0.5)
    emb = np.asarray(learner.embeddings(jnp.asarray(ctx)))
    for c, name in enumerate(NAMES):
        np.testing.assert_array_equal(emb[c], _reference(vocab_clip, name, ctx, "end")[0])


@pytest.mark.parametrize("std", [0.02, 0.05])  # the CoOp default, and init_std honoured
def test_random_init_is_normal_with_the_configured_std(vocab_clip, std):
    from scipy.stats import kstest

    cfg = prompts.PromptConfig(n_ctx=16) if std == 0.02 else prompts.PromptConfig(n_ctx=16, init_std=std)
    learner = prompts.PromptLearner(vocab_clip, NAMES, cfg)
    draws = [np.asarray(learner.init(jax.random.key(s))) for s in range(10)]
    assert draws[0].shape == (len(NAMES), 16, 16) and not np.array_equal(draws[0], draws[1])
    x = np.concatenate([d.ravel() for d in draws]).astype(np.float64)  # 10,240 draws
    # four standard errors: the sample std of n normal draws has SE std / sqrt(2n) (0.7% here), the mean std / sqrt(n)
    assert abs(x.std() - std) < 4 * std / np.sqrt(2 * x.size)
    assert abs(x.mean()) < 4 * std / np.sqrt(x.size)
    assert kstest(x / std, "norm").pvalue > 1e-3  # normal, not e.g. uniform with the same std


def test_encode_text_with_placeholder_context_equals_token_ids(vocab_clip):
    n_ctx = 6
    learner = prompts.PromptLearner(vocab_clip, NAMES, prompts.PromptConfig(n_ctx=n_ctx))
    x_id = vocab_clip.tokenizer.encode("X")
    assert len(x_id) == 1
    x_emb = _table(vocab_clip)[x_id[0]]
    ctx = jnp.asarray(np.broadcast_to(x_emb, (len(NAMES), n_ctx, 16)))

    @jax.jit
    def from_embeddings(ctx):
        emb = learner.embeddings(ctx)
        return vocab_clip.model.apply(
            {"params": vocab_clip.params},
            embeddings=emb,
            eot_index=jnp.asarray(learner.eot_index),
            method="encode_text",
        )[0]

    texts = [" ".join(["X"] * n_ctx + [n.replace("_", " ")]) + "." for n in NAMES]
    ref = vocab_clip.encode_text(vocab_clip.tokenize(texts))
    np.testing.assert_allclose(np.asarray(from_embeddings(ctx)), np.asarray(ref), atol=1e-5, rtol=1e-5)
    # A different context changes the text features (the context really reaches the encoder).
    other = np.asarray(from_embeddings(ctx + 0.1 * jax.random.normal(jax.random.key(3), ctx.shape)))
    assert np.abs(other - np.asarray(ref)).max() > 1e-3


def test_init_from_words(vocab_clip):
    words = "a photo of a"
    tok = vocab_clip.tokenizer
    table = _table(vocab_clip)
    ref = table[tok.encode(words)]
    for class_specific in (True, False):
        learner = prompts.PromptLearner(
            vocab_clip, NAMES, prompts.PromptConfig(n_ctx=16, init=words, class_specific=class_specific)
        )
        assert learner.n_ctx == 4
        ctx = np.asarray(learner.init(jax.random.key(0)))
        assert ctx.shape == ((len(NAMES), 4, 16) if class_specific else (4, 16))
        np.testing.assert_array_equal(ctx.reshape(-1, 4, 16), np.broadcast_to(ref, ctx.reshape(-1, 4, 16).shape))
        emb = np.asarray(learner.embeddings(jnp.asarray(ctx)))
        # The prompt is then exactly the embedding of "a photo of a {name}.".
        ids = tok([f"a photo of a {n.replace('_', ' ')}." for n in NAMES])
        np.testing.assert_array_equal(emb, table[ids])


def test_class_specific_count_for_47_classes(clip_text_512):
    path = os.path.join(os.path.dirname(prompts.__file__), "..", "data", "assets", "dtd.json")
    with open(path) as f:
        names = json.load(f)["class_names"]
    assert len(names) == 47
    learner = prompts.PromptLearner(clip_text_512, names, prompts.PromptConfig())
    shape = jax.eval_shape(learner.init, jax.random.key(0)).shape
    assert shape == (47, 16, 512) and int(np.prod(shape)) == 385_024
    shared = prompts.PromptLearner(clip_text_512, names, prompts.PromptConfig(class_specific=False))
    assert int(np.prod(jax.eval_shape(shared.init, jax.random.key(0)).shape)) == 16 * 512


def test_too_long_prompt_names_the_fix(vocab_clip):
    long_name = "extraordinarily_magnificent_multicoloured_hot_air_balloon_over_the_mountains"
    n_name = len(vocab_clip.tokenizer.encode(long_name.replace("_", " ") + "."))
    ok = 77 - 2 - n_name
    prompts.PromptLearner(vocab_clip, ["cat", long_name], prompts.PromptConfig(n_ctx=ok))  # fits exactly
    with pytest.raises(ValueError, match=rf"lower prompt.n_ctx to at most {ok}") as err:
        prompts.PromptLearner(vocab_clip, ["cat", long_name], prompts.PromptConfig(n_ctx=ok + 1))
    assert "extraordinarily" in str(err.value)
    with pytest.raises(ValueError, match="prompt.n_ctx"):
        prompts.FixedPrompts(vocab_clip, ["cat", long_name], n_placeholders=70)


def test_bad_configs(vocab_clip):
    with pytest.raises(ValueError, match="position"):
        prompts.PromptConfig(position="start")
    with pytest.raises(ValueError, match="n_ctx"):
        prompts.PromptConfig(n_ctx=0)
    no_tok = vocab_clip.__class__(**{**vocab_clip.__dict__, "tokenizer": None})
    with pytest.raises(ValueError, match="tokenizer"):
        prompts.PromptLearner(no_tok, NAMES, prompts.PromptConfig())


def test_fixed_prompts(vocab_clip):
    tok = Tokenizer.default()
    fixed = prompts.FixedPrompts(vocab_clip, ["golden_retriever"], n_placeholders=3)
    assert fixed.texts == ["X X X golden retriever."]
    np.testing.assert_array_equal(fixed.ids, tok(["X X X golden retriever."]))
    templ = prompts.FixedPrompts(vocab_clip, ["sea_lion"], template="a photo of a {}.")
    assert templ.texts == ["a photo of a sea lion."]
