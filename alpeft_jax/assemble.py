"""A run's model from its config: the backbone, the class names, the adapted model and the preprocessing.

    parts = assemble(config)                        # what `loop.Run` trains and `predict` / `export` reload
    parts.model.logits(trainable, images)           # images: parts.spec's size and normalisation

One function for every place that turns a config.json into a model, so a run, its predictions and its exports
read the same image size (`data.image_size`, else the backbone's), the same normalisation and the same classes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp

from alpeft_jax import backbones
from alpeft_jax.data import preprocess as pp
from alpeft_jax.models.adapted import AdaptConfig, AdaptedModel
from alpeft_jax.models.backbone import Backbone


@dataclasses.dataclass
class Assembly:
    """What a config builds: backbone, class names (label order), adapted model and preprocessing."""

    backbone: Backbone
    class_names: list[str]
    model: AdaptedModel
    spec: pp.PreprocessSpec  # image size and normalisation of the inputs the model reads

    @property
    def image_size(self) -> int:
        """The side of the square images the model reads."""
        return self.spec.image_size


def config_class_names(c: Any, source: Any = None) -> list[str]:
    """Class names in label order as a run of config `c` names them (its pool split's, CoOp's when asked)."""
    from alpeft_jax import data
    from alpeft_jax.data import runsets

    if source is None:
        classes = runsets.parse_classes(c.data.get("classes", ""))
        source = data.get_source(
            c.data.name,
            c.data.train_split,
            c.data.dir or None,
            split_file=c.data.split_file or None,
            **({} if classes is None else {"classes": classes}),
        )
    names = list(source.class_names)
    if runsets.parse_classes(c.data.get("classes", "")) is not None:
        return names  # the user's list, in the user's order
    if c.data.coop_names:
        try:
            names = data.coop_names(c.data.name, names)
        except (KeyError, ValueError):
            pass
    return names


def assemble(
    c: Any,
    class_names: Sequence[str] | None = None,
    *,
    backbone: Backbone | str | None = None,
    dtype: Any = None,
    place: Callable[[Any], Any] | None = None,
) -> Assembly:
    """The backbone, classes, model and preprocessing of config `c` (a ConfigDict or its config.json dict).

    `class_names` default to the config's data source's; `backbone` (a loaded one or a source) replaces
    `c.backbone`; `dtype` the compute dtype `c.dtype`; `place` puts the frozen weights on devices first.
    """
    c = _as_config(c)
    names = list(class_names) if class_names is not None else config_class_names(c)
    if isinstance(backbone, Backbone):
        bb = backbone
    else:
        bb = backbones.load(backbone or c.backbone, dtype=jnp.dtype(dtype or c.dtype))
    if place is not None:
        bb.params = place(bb.params)
    model = AdaptedModel(bb, names, AdaptConfig.from_config(c.adapt, bb.family))
    spec = pp.resolve_spec(
        c.data.image_size or bb.image_size, bb.mean, bb.std, resize_ratio=bb.eval_resize, crop=bb.crop_offset
    )
    return Assembly(bb, names, model, spec)


def _as_config(c: Any) -> Any:
    if isinstance(c, dict):
        import ml_collections

        return ml_collections.ConfigDict(c)
    return c
