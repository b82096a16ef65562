"""Data layer: pool sources, per-backbone preprocessing, prefetching batch pipelines, class names and prompts."""

from alpeft_jax.data.classnames import class_names, coop_names, dataset_info, prompts, templates
from alpeft_jax.data.pipeline import Batches, as_arrays, epoch_order, eval_batches, num_batches, train_batches
from alpeft_jax.data.preprocess import PreprocessSpec, eval_image, resolve_spec, train_image
from alpeft_jax.data.sources import (
    ArraySource,
    CorruptImageError,
    FileListSource,
    MissingDataError,
    Source,
    TfdsSource,
    coop_split,
    csv_manifest,
    digits,
    fashion_mnist,
    get_source,
    image_folder,
)

__all__ = [
    "ArraySource",
    "Batches",
    "CorruptImageError",
    "FileListSource",
    "MissingDataError",
    "PreprocessSpec",
    "Source",
    "TfdsSource",
    "as_arrays",
    "class_names",
    "coop_names",
    "coop_split",
    "csv_manifest",
    "dataset_info",
    "digits",
    "epoch_order",
    "eval_batches",
    "eval_image",
    "fashion_mnist",
    "get_source",
    "image_folder",
    "num_batches",
    "prompts",
    "resolve_spec",
    "templates",
    "train_batches",
    "train_image",
]
