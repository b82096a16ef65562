"""A finished run's model, ready to use: `load_model(DIR)` -> `TrainedModel` with `predict` and `logits`.

    model = alpeft_jax.load_model("exports/run1")        # a `--format=native` export, or a run's workdir
    model.predict(["cat.jpg", "dog.png"]).names          # predicted class names
    model.logits(images)                                 # float32[N, K]: paths, PIL images, uint8 arrays, or
                                                         # images already preprocessed (float32[N, S, S, 3])

Images are preprocessed as the run evaluated them: the shorter side resized to the run's image size (bicubic),
centre-cropped, normalised with the backbone's mean and std. The model is the run's adapted backbone with its
classifier (`AdaptedModel.classifier`): for CLIP's prompt and LoRA modes the class text embeddings are computed
once, so a prediction runs the image tower and one matrix product.

A native export (`python -m alpeft_jax.export --format=native`) is a directory of
    model.json               format, the run's config, the round, its test metrics, preprocessing facts, where
                             the backbone is (`backbone/`, or a reference such as `efficientnet-lite0`)
    classes.txt              the class names, one per line, in label order
    trainable.safetensors    the trainable tree (LoRA factors, prompt context, head), names `lora/img/.../a`
    backbone/                the frozen backbone as it was loaded (absent when referenced)
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alpeft_jax.assemble import Assembly, assemble, config_class_names
from alpeft_jax.data import preprocess as pp
from alpeft_jax.models import heads, lora
from alpeft_jax.parallel import Sharder
from alpeft_jax.utils import flatten, unflatten

__all__ = ["NATIVE_FORMAT", "Predictions", "TrainedModel", "load_model", "read_class_names"]

NATIVE_FORMAT = "alpeft_jax.native"
MODEL_FILE = "model.json"
CLASSES_FILE = "classes.txt"
TRAINABLE_FILE = "trainable.safetensors"
BACKBONE_DIR = "backbone"
TRAINABLE_PARTS = ("lora", "prompt", "head")  # what a prediction needs (not the loss-prediction module)


@dataclasses.dataclass
class Predictions:
    """Predicted class per image: `labels` int[N], `names`, `probs` float32[N, K] (softmax of the logits)."""

    labels: np.ndarray
    names: list[str]
    probs: np.ndarray


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Class names from a classes.txt (one per line, label order)."""
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.rstrip("\n")]


def _jsonable_config(c: Any) -> dict[str, Any]:
    return c if isinstance(c, dict) else c.to_dict()


class TrainedModel:
    """An adapted backbone with its trained parts, its classes and its preprocessing; see the module docstring."""

    def __init__(self, parts: Assembly, trainable: dict[str, Any], info: dict[str, Any], batch_size: int = 64) -> None:
        self.parts = parts
        self.model = parts.model
        self.class_names = list(parts.class_names)
        self.spec = parts.spec
        self.info = info  # config (dict), round, metrics, source
        self.batch_size = int(batch_size)
        self.trainable = {k: jax.tree.map(jnp.asarray, trainable[k]) for k in TRAINABLE_PARTS if k in trainable}
        self.sharder = Sharder()
        self.batch_size = self.sharder.global_size(self.batch_size)
        head, self.normalize, self.scale = self.model.classifier(self.trainable)  # the text tower runs once here
        self.head = {k: np.asarray(v, np.float32) for k, v in head.items()}
        self._fn = jax.jit(self._logits_impl, out_shardings=self.sharder.replicated)

    # -- construction --------------------------------------------------------------------------------------------
    @classmethod
    def from_workdir(
        cls, workdir: str | os.PathLike, round: int | None = None, *, dtype: Any = None, batch_size: int = 64
    ) -> TrainedModel:
        """The model a run saved at the end of `round` (default: its last finished round)."""
        from alpeft_jax.checkpoint import TreeStore
        from alpeft_jax.workdir import Workdir, as_path, read_json

        root = as_path(workdir)
        if not (root / "config.json").exists():
            raise FileNotFoundError(f"{root} holds no run (no config.json): pass the --workdir of a run.")
        wd = Workdir(root)
        config = read_json(wd.config)
        store = TreeStore(wd.rounds)
        steps = store.steps()
        if not steps:
            raise FileNotFoundError(f"{root} has no finished round yet (nothing in {wd.rounds}): let a round finish.")
        r = steps[-1] if round is None else int(round)
        if r not in steps:
            raise ValueError(f"--round={r}: {root} has rounds {', '.join(map(str, steps))}; pick one of them.")
        tree, meta = store.restore(r)
        store.close()
        import ml_collections

        c = ml_collections.ConfigDict(config)
        names = read_class_names(wd.classes) if wd.classes.exists() else config_class_names(c)
        parts = assemble(c, names, dtype=dtype)
        info = {"config": config, "round": r, "metrics": meta.get("metrics", {}), "source": str(root)}
        return cls(parts, tree["trainable"], info, batch_size)

    # -- saving --------------------------------------------------------------------------------------------------
    def save_native(self, out: str | os.PathLike, *, copy_backbone: bool = True) -> None:
        """Write the native export (module docstring) to the directory `out`."""
        from safetensors.numpy import save_file

        from alpeft_jax.workdir import write_json

        os.makedirs(out, exist_ok=True)
        bb, name = self.parts.backbone, str(self.info["config"]["backbone"])
        if _is_named(name):  # shipped by a pip package: the name is enough
            where = name
        elif copy_backbone and bb.source and os.path.exists(bb.source):
            where = _copy_backbone(bb.source, os.path.join(out, BACKBONE_DIR))
        else:
            where = bb.source or name
        flat = {k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in flatten(self.trainable).items()}
        save_file(flat, os.path.join(out, TRAINABLE_FILE))
        with open(os.path.join(out, CLASSES_FILE), "w", encoding="utf-8") as f:
            f.write("".join(f"{n}\n" for n in self.class_names))
        write_json(
            os.path.join(out, MODEL_FILE),
            {
                "format": NATIVE_FORMAT,
                "version": 1,
                "config": self.info["config"],
                "round": self.info.get("round"),
                "metrics": self.info.get("metrics", {}),
                "backbone": {"family": bb.family, "source": where, "loaded_from": bb.source or name},
                "preprocessing": {
                    "image_size": self.spec.image_size,
                    "mean": list(self.spec.mean),
                    "std": list(self.spec.std),
                    "resize": f"shorter side to {self.spec.resize_to} (bicubic), centre crop image_size x image_size "
                    f"(offset {self.spec.crop}ed)",
                    "normalize": "(pixels / 255 - mean) / std, RGB, channels last",
                },
                "classifier": {"normalize": self.normalize, "scale": self.scale},
            },
        )

    # -- inference -----------------------------------------------------------------------------------------------
    def _logits_impl(self, params: Any, trainable: Any, head: Any, x: jax.Array) -> jax.Array:
        # the image tower as `AdaptedModel.image_features(..., "images")`, its frozen weights an argument of the
        # compiled function rather than constants folded into it
        m = self.model
        x = x.astype(m.backbone.dtype)
        feats = lora.apply(m.backbone.model, params, trainable.get("lora"), m.lora_config, x, method="encode_image")[0]
        return heads.apply(head, feats, normalize=self.normalize, scale=self.scale)

    def logits_of_batch(self, x: np.ndarray) -> np.ndarray:
        """Logits float32[B, K] of preprocessed images float32[B, S, S, 3] (padded to the batch size inside)."""
        n = len(x)
        if n == 0:
            return np.zeros((0, len(self.class_names)), np.float32)
        size = max(self.sharder.global_size(n), self.batch_size) if n > self.batch_size else self.batch_size
        if n < size:
            x = np.concatenate([x, np.zeros((size - n, *x.shape[1:]), x.dtype)])
        out = self._fn(
            self.parts.backbone.params, self.trainable, self.head, self.sharder.put(np.asarray(x, np.float32))
        )
        return np.asarray(jax.device_get(out), np.float32)[:n]

    def preprocess(self, images: Any) -> np.ndarray:
        """float32[N, S, S, 3] model inputs of image paths, PIL images or uint8 arrays (preprocessed: as they are)."""
        if isinstance(images, np.ndarray) and images.dtype != np.uint8 and images.ndim == 4:
            s = self.spec.image_size
            if images.shape[1:] != (s, s, 3):
                raise ValueError(f"preprocessed images must be float[N, {s}, {s}, 3], got {images.shape}.")
            return images.astype(np.float32)
        if isinstance(images, (str, os.PathLike)) or (isinstance(images, np.ndarray) and images.ndim in (2, 3)):
            images = [images]
        if not len(images):
            return np.zeros((0, self.spec.image_size, self.spec.image_size, 3), np.float32)
        return np.stack([pp.eval_image(_read(im), self.spec) for im in images])

    def logits(self, images: Any) -> np.ndarray:
        """Class logits float32[N, K] of images (paths, PIL images, uint8 arrays, or preprocessed float32)."""
        items, bs = _as_list(images), self.batch_size
        out = [self.logits_of_batch(self.preprocess(items[s : s + bs])) for s in range(0, len(items), bs)]
        return np.concatenate(out) if out else np.zeros((0, len(self.class_names)), np.float32)

    def predict(self, images: Any) -> Predictions:
        """The predicted class and the class probabilities of each image."""
        probs = softmax(self.logits(images))
        labels = probs.argmax(-1)
        return Predictions(labels, [self.class_names[i] for i in labels], probs)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64, returned as float32."""
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(-1, keepdims=True))
    return (z / z.sum(-1, keepdims=True)).astype(np.float32)


def _as_list(images: Any) -> Any:
    if isinstance(images, (str, os.PathLike)):
        return [images]
    if isinstance(images, np.ndarray):
        return images if images.ndim == 4 else images[None]
    return list(images)


def _read(image: Any) -> Any:
    if isinstance(image, (str, os.PathLike)):
        from alpeft_jax.data.sources.files import load_image

        return load_image(str(image), "pass only readable image files")
    return image


def _is_named(backbone: str) -> bool:
    from alpeft_jax import backbones

    return str(backbone).lower() in backbones._NAMED


_BACKBONE_FILES = (".json", ".safetensors", ".txt", ".model", ".bin", ".pt", ".pth")


def _copy_backbone(source: str, dest: str) -> str:
    """Copy a backbone directory's weight, config and tokenizer files (or a state-dict file) into `dest`."""
    import shutil

    os.makedirs(dest, exist_ok=True)
    if os.path.isfile(source):
        shutil.copy2(source, os.path.join(dest, os.path.basename(source)))
        return os.path.join(BACKBONE_DIR, os.path.basename(source))
    for name in sorted(os.listdir(source)):
        path = os.path.join(source, name)
        if os.path.isfile(path) and name.endswith(_BACKBONE_FILES):
            shutil.copy2(path, os.path.join(dest, name))
    return BACKBONE_DIR


def load_model(
    path: str | os.PathLike, *, round: int | None = None, dtype: Any = None, batch_size: int = 64
) -> TrainedModel:
    """A `TrainedModel` from a native export directory, or from a run's workdir (`round`: default the last)."""
    path = os.fspath(path)
    manifest = os.path.join(path, MODEL_FILE)
    if not os.path.exists(manifest):
        if os.path.exists(os.path.join(path, "config.json")) and os.path.isdir(os.path.join(path, "ckpt")):
            return TrainedModel.from_workdir(path, round, dtype=dtype, batch_size=batch_size)
        raise FileNotFoundError(
            f"{path} is neither a native export (no {MODEL_FILE}) nor a run's workdir: make one with "
            f"python -m alpeft_jax.export --workdir=RUN --format=native --out={path}"
        )
    with open(manifest) as f:
        info = json.load(f)
    if info.get("format") != NATIVE_FORMAT:
        raise ValueError(
            f"{manifest} is not a native export (format {info.get('format')!r}); export with --format=native."
        )
    if round is not None and round != info.get("round"):
        raise ValueError(f"{path} holds round {info.get('round')} only; export round {round} with --round={round}.")
    from safetensors.numpy import load_file

    where = info["backbone"]["source"]
    source = os.path.join(path, where) if where == BACKBONE_DIR or where.startswith(BACKBONE_DIR + os.sep) else where
    import ml_collections

    c = ml_collections.ConfigDict(info["config"])
    parts = assemble(c, read_class_names(os.path.join(path, CLASSES_FILE)), backbone=source, dtype=dtype)
    trainable = unflatten(load_file(os.path.join(path, TRAINABLE_FILE)))
    meta = {k: info.get(k) for k in ("config", "round", "metrics")} | {"source": path}
    return TrainedModel(parts, trainable, meta, batch_size)
