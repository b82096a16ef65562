"""Pool sources: indexable image sets with stable integer ids, labels and class names.

Every source has ``len(source)``, ``source[i] -> dict(image=uint8[H, W, 3], label=int, id=int, path=str|None)``
(grey images expanded to three channels, label -1 when unknown), ``.labels`` (int64[N], read without decoding
images where the format allows), ``.ids`` (int64[N], the stable example ids, position order), ``.class_names``
and ``.name``. Built-in sources number their examples 0..N-1 in a deterministic order (sorted paths for image
folders, file order for CSV manifests and split files, record order for TFDS and IDX files), so the same data
gives the same ids on every machine.

Entry point: ``get_source(name, split, data_dir=None, split_file=None, **options)``; ``split`` is a split name
or a TFDS-style slice (``train[:80%]``, ``train[80%:]``; ``data.splits``). The name picks one registered data
kind (``registry``; one module of this package per kind of data, so a new kind is one new file):

- ``"fashion_mnist"`` (``arrays``) - the four Fashion-MNIST IDX files from the Debian package
  ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``) or from ``data_dir``; splits ``train`` /
  ``test``.
- ``"digits"`` (``arrays``) - scikit-learn's 8x8 digits, split deterministically (every fifth image is ``test``).
- ``"folder"`` (``files``) - an image folder ``data_dir/<class>/<image>`` (or ``data_dir/<split>/<class>/<image>``);
  with ``classes=`` (the class list, in label order) and no class sub-folders, every image at any depth is an
  unlabelled row.
- ``"csv"`` (``files``) - a manifest ``path,label`` (header required; paths relative to the CSV's directory;
  empty label = unlabelled). ``data_dir`` is the CSV file or a directory holding ``<split>.csv``. ``classes=``
  fixes the class list and its order (a label outside it is an error); without it, the sorted labels.

``listing(...)`` gives the files and labels a folder or CSV split reads (no image decoded) and ``split_location``
the folder or file they are listed from, so a run can tell a test split of its own from the pool's images.
- ``"coop:<dataset>"`` (or ``coop=True``; ``coop``) - the CoOp folder layout under the DATA root ``data_dir``:
  CoOp's ``split_zhou_*.json`` (e.g. ``dtd/images`` + ``dtd/split_zhou_DescribableTextures.json``; ``split_file``
  overrides it) or, for FGVC-Aircraft, ``fgvc_aircraft/images_variant_<split>.txt``; CoOp class names.
- anything else, optionally prefixed ``"tfds:"`` (``tfds``) - a prepared TFDS dataset read with
  ``tfds.data_source`` (random access, no TensorFlow needed). ``coop_names=True`` maps its class names to CoOp's
  prompt names. With ``split_file`` (a CoOp ``split_zhou_*.json``, relative paths looked up in the TFDS data
  directory; kind ``tfds_split_file`` in ``coop``), the split file's lists are applied to the TFDS records by
  file name: CoOp's split without a second copy of the images.

Slices cut a split's record order (TFDS: the order TFDS shuffled the records into when it built them); image
folders and CSV manifests, listed class by class, are cut from a fixed shuffle (seed 0) of that order, so
``train[:80%]`` and ``train[80%:]`` are disjoint and both hold every class. Joining splits with ``+`` works for
TFDS datasets only. ``inspect_source`` gives a split's size and class count from metadata alone (no image
decoded), for the pre-flight checks; it goes through the same locate step as ``get_source``, so both raise the
same errors.

Unreadable images: image files are decoded lazily, when an example is read. A file that cannot be decoded
raises ``CorruptImageError`` naming the file and how to exclude it (delete or move it out of the folder, or
drop its row from the CSV); nothing is skipped silently, so a labelled image is never lost without notice.
Files listed in a CSV manifest or a CoOp split file that do not exist are reported when the source is
built (``MissingDataError``). Classes with no images are allowed: they keep their index and name.
Missing datasets raise ``MissingDataError`` with the command that gets them.

``source.fingerprint()`` is a cheap hash of what a source reads (file paths with sizes and modification times, a
TFDS build's version and files, or the pixel array); the feature caches are keyed on it (``fingerprint_of`` also
serves sources without one).
"""

from __future__ import annotations

import importlib
import pkgutil

from alpeft_jax.data.sources.arrays import FASHION_MNIST_DIR, ArraySource, digits, fashion_mnist, read_idx
from alpeft_jax.data.sources.coop import TfdsSplitFileSource, coop_aircraft, coop_split, missing_split_file
from alpeft_jax.data.sources.core import (
    CorruptImageError,
    MissingDataError,
    Source,
    SourceInfo,
    SubsetSource,
    fingerprint_of,
)
from alpeft_jax.data.sources.files import IMAGE_EXTENSIONS, FileListSource, csv_manifest, image_folder, load_image
from alpeft_jax.data.sources.registry import (
    Counts,
    Kind,
    Listing,
    Request,
    get_kind,
    get_source,
    inspect_source,
    known_kinds,
    listing,
    register,
    source_kind,
    split_file_path,
    split_location,
)
from alpeft_jax.data.sources.tfds import TfdsSource, tfds_data_dir, tfds_problem

for _module in pkgutil.iter_modules(__path__):  # a kind in a new module registers itself on import
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "Source",
    "MissingDataError",
    "CorruptImageError",
    "SourceInfo",
    "SubsetSource",
    "fingerprint_of",
    "get_source",
    "inspect_source",
    "source_kind",
    "split_file_path",
    "Kind",
    "Request",
    "Counts",
    "Listing",
    "listing",
    "split_location",
    "register",
    "get_kind",
    "known_kinds",
    "ArraySource",
    "read_idx",
    "fashion_mnist",
    "digits",
    "FASHION_MNIST_DIR",
    "FileListSource",
    "load_image",
    "image_folder",
    "csv_manifest",
    "IMAGE_EXTENSIONS",
    "coop_split",
    "coop_aircraft",
    "missing_split_file",
    "TfdsSplitFileSource",
    "TfdsSource",
    "tfds_data_dir",
    "tfds_problem",
]
