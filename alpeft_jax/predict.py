"""Predict with a run's model: `python -m alpeft_jax.predict --workdir=RUN [--round=R] INPUT... [--out=FILE.csv]`.

    python -m alpeft_jax.predict --workdir=workdirs/demo/entropy+pcb/s1 run:test          # the run's test split
    python -m alpeft_jax.predict --model=exports/demo photos/ extra.jpg labels.csv --out=predictions.csv

`--model=DIR` (a native export) replaces `--workdir`. Each INPUT is
  * an image file, or a folder (searched recursively; an image under `<folder>/<class name>/` has that label);
  * a CSV `path[,label]` (header optional; paths relative to the CSV; label = a class name, may be empty);
  * `run:test` / `run:pool`: the run's own test split (exactly the images its accuracy was measured on) or pool;
  * `NAME:SPLIT`: any data source with a split spec, e.g. `fashion_mnist:test`, `mnist:test[:10%]` (TFDS).
One CSV row per image: path, predicted class, its probability, the top-k as `class:prob` (`;`-separated), the
predictive entropy and the top-1 minus top-2 margin (for triage), and the true label where the input has one;
then a closing line `# accuracy ... ECE ...` over the labelled images. Unreadable images are one line each on
stderr and are left out; the rest are predicted.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import io
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from alpeft_jax.data import preprocess as pp

__all__ = ["Item", "expand_inputs", "main", "predict_rows"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclasses.dataclass(frozen=True)
class Item:
    """One image to predict: its name in the output, how to read its pixels, its label (-1: none)."""

    name: str
    read: Callable[[], Any]
    label: int = -1


class InputError(ValueError):
    """An INPUT that cannot be read as images; the message says what is accepted."""


def _file_reader(path: str) -> Callable[[], Any]:
    from alpeft_jax.data.sources.files import load_image

    return lambda: load_image(path, "it is left out")


def _label_index(label: str, class_names: Sequence[str], where: str) -> int:
    if not label:
        return -1
    if label in class_names:
        return list(class_names).index(label)
    raise InputError(f"{where}: label {label!r} is not one of the model's classes ({', '.join(class_names[:10])}...).")


def _folder(root: str, class_names: Sequence[str]) -> list[Item]:
    items = []
    for d, dirs, files in os.walk(root):
        dirs.sort()
        for f in sorted(files):
            if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."):
                path = os.path.join(d, f)
                top = os.path.relpath(path, root).split(os.sep)[0]
                label = list(class_names).index(top) if top in class_names and top != f else -1
                items.append(Item(path, _file_reader(path), label))
    return items


def _csv(path: str, class_names: Sequence[str]) -> list[Item]:
    base = os.path.dirname(os.path.abspath(path))
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f) if r and any(x.strip() for x in r)]
    if rows and rows[0][0].strip().lower() == "path":
        rows = rows[1:]
    items = []
    for line, row in enumerate(rows, start=1):
        p = row[0].strip()
        full = p if os.path.isabs(p) else os.path.join(base, p)
        label = _label_index(row[1].strip() if len(row) > 1 else "", class_names, f"{path} row {line}")
        items.append(Item(full, _file_reader(full), label))
    return items


def _source_items(
    source: Any, positions: np.ndarray, class_names: Sequence[str], dataset: str, coop: bool
) -> list[Item]:
    """Items of a data source's rows; labels mapped to the model's classes by name (CoOp's names when `coop`)."""
    from alpeft_jax import data

    names = list(source.class_names)
    if coop:
        try:
            names = data.coop_names(dataset, names)
        except (KeyError, ValueError):
            pass
    index = {n: i for i, n in enumerate(class_names)}
    to_model = np.asarray([index.get(n, -1) for n in names] + [-1], np.int64)  # the last: label -1 stays -1
    labels, ids = np.asarray(source.labels, np.int64), np.asarray(source.ids, np.int64)
    tag = source.name

    def reader(pos: int) -> Callable[[], Any]:
        return lambda: source[pos]["image"]

    return [Item(f"{tag}#{int(ids[p])}", reader(int(p)), int(to_model[labels[p]])) for p in positions]


def expand_inputs(inputs: Sequence[str], class_names: Sequence[str], config: Any) -> list[Item]:
    """The images of every INPUT (module docstring), in order; an InputError names an input that is none of them."""
    from alpeft_jax import data
    from alpeft_jax.inputs import subset

    items: list[Item] = []
    for spec in inputs:
        if spec in ("run:test", "run:pool"):
            if config is None:
                raise InputError(f"{spec}: the model carries no run config to find the split in.")
            c = config.data
            split = c.test_split if spec == "run:test" else c.train_split
            src = data.get_source(c.name, split, c.dir or None, split_file=c.split_file or None)
            k, seed = (c.max_test, c.subset_seed + 1) if spec == "run:test" else (c.max_pool, c.subset_seed)
            items += _source_items(src, subset(len(src), k, seed), class_names, c.name, bool(c.coop_names))
        elif os.path.isdir(spec):
            found = _folder(spec, class_names)
            if not found:
                raise InputError(f"{spec}: no image files in this folder (looked for {', '.join(IMAGE_EXTENSIONS)}).")
            items += found
        elif os.path.isfile(spec) and spec.lower().endswith(".csv"):
            items += _csv(spec, class_names)
        elif os.path.isfile(spec):
            items.append(Item(spec, _file_reader(spec)))
        elif ":" in spec and not os.path.exists(spec):
            name, _, split = spec.rpartition(":")
            same = config is not None and name == config.data.name
            data_dir = (config.data.dir or None) if same else None
            src = data.get_source(name, split, data_dir)
            coop = bool(config.data.coop_names) if config is not None else False
            items += _source_items(src, np.arange(len(src)), class_names, name, coop)
        else:
            raise InputError(
                f"{spec}: no such file or folder, and not a data spec NAME:SPLIT (e.g. run:test, fashion_mnist:test)."
            )
    return items


def _load(item: Item, spec: pp.PreprocessSpec) -> np.ndarray | Exception:
    try:
        return pp.eval_image(item.read(), spec)
    except Exception as e:  # noqa: BLE001 - any unreadable image is reported and left out
        return e


def _prepared(items: Sequence[Item], spec: pp.PreprocessSpec, batch: int, threads: int) -> Iterator[tuple[list, list]]:
    """(indices, arrays or errors) per batch of items, decoded by a thread pool one batch ahead."""
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:

        def submit(start: int) -> list[concurrent.futures.Future]:
            return [pool.submit(_load, it, spec) for it in items[start : start + batch]]

        pending = submit(0) if items else []
        for start in range(0, len(items), batch):
            ahead = submit(start + batch) if start + batch < len(items) else []
            yield list(range(start, start + len(pending))), [f.result() for f in pending]
            pending = ahead


def predict_rows(
    model: Any,
    items: Sequence[Item],
    *,
    top_k: int = 5,
    threads: int | None = None,
    on_skip: Callable[[str], None] | None = None,
    progress: Any = None,
) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray]:
    """CSV rows of every readable item, with their logits float32[M, K] and labels int[M] (-1: none)."""
    from alpeft_jax.trained import softmax

    names = model.class_names
    rows, all_logits, all_labels = [], [], []
    threads = threads or min(8, os.cpu_count() or 1)
    for idx, loaded in _prepared(items, model.spec, model.batch_size, threads):
        good = [(i, x) for i, x in zip(idx, loaded) if not isinstance(x, Exception)]
        for i, x in zip(idx, loaded):
            if isinstance(x, Exception) and on_skip is not None:
                on_skip(f"skipped {items[i].name}: {x}")
        if progress is not None:
            progress.update(len(idx))
        if not good:
            continue
        logits = model.logits_of_batch(np.stack([x for _, x in good]))
        probs = softmax(logits).astype(np.float64)
        order = np.argsort(-probs, axis=1)
        k = min(top_k, len(names))
        for n, (i, _) in enumerate(good):
            p, o = probs[n], order[n]
            entropy = float(-(p * np.log(np.maximum(p, 1e-30))).sum())
            margin = float(p[o[0]] - p[o[1]]) if len(names) > 1 else 1.0
            item = items[i]
            rows.append(
                {
                    "path": item.name,
                    "prediction": names[o[0]],
                    "probability": f"{p[o[0]]:.6f}",
                    "top_k": ";".join(f"{names[j]}:{p[j]:.6f}" for j in o[:k]),
                    "entropy": f"{entropy:.6f}",
                    "margin": f"{margin:.6f}",
                    "label": names[item.label] if item.label >= 0 else "",
                }
            )
        all_logits.append(logits)
        all_labels.append(np.asarray([items[i].label for i, _ in good], np.int64))
    if not all_logits:
        return rows, np.zeros((0, len(names)), np.float32), np.zeros(0, np.int64)
    return rows, np.concatenate(all_logits), np.concatenate(all_labels)


def summary(logits: np.ndarray, labels: np.ndarray) -> dict[str, float] | None:
    """Accuracy, NLL, ECE, Brier over the labelled rows (the run's definitions), or None when none is labelled."""
    from alpeft_jax import evaluate

    keep = labels >= 0
    if not keep.any():
        return None
    import jax.numpy as jnp

    return evaluate.finalize(evaluate.batch_stats(jnp.asarray(logits[keep]), jnp.asarray(labels[keep])))


COLUMNS = ("path", "prediction", "probability", "top_k", "entropy", "margin", "label")


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (2: one error line per problem, nothing written)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m alpeft_jax.predict", description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="*", metavar="INPUT", help="image files, folders, CSVs, NAME:SPLIT, run:test")
    parser.add_argument("--workdir", help="the run's directory")
    parser.add_argument("--model", help="a native export (python -m alpeft_jax.export --format=native) instead")
    parser.add_argument("--round", type=int, default=None, help="the round's model (default: the last finished)")
    parser.add_argument("--out", default="", help="write the CSV here (default: standard output)")
    parser.add_argument("--top_k", type=int, default=5, help="classes listed per image")
    parser.add_argument("--batch_size", type=int, default=64, help="images per batch on the mesh")
    args = parser.parse_args(argv)
    problems = []
    if bool(args.workdir) == bool(args.model):
        problems.append("pass exactly one of --workdir=RUN and --model=EXPORT_DIR.")
    if not args.inputs:
        problems.append("no INPUT: pass image files, folders, CSVs or a data spec such as run:test.")
    if args.top_k < 1:
        problems.append(f"--top_k={args.top_k}: must be at least 1.")
    if args.out and os.path.isdir(args.out):
        problems.append(f"--out={args.out} is a folder; pass a file name such as predictions.csv.")
    if problems:
        return _fail(problems)
    from alpeft_jax.convert.common import CheckpointError
    from alpeft_jax.data.sources import MissingDataError
    from alpeft_jax.metrics import bar
    from alpeft_jax.trained import TrainedModel, load_model

    try:
        if args.workdir:
            model = TrainedModel.from_workdir(args.workdir, args.round, batch_size=args.batch_size)
        else:
            model = load_model(args.model, round=args.round, batch_size=args.batch_size)
        import ml_collections

        config = ml_collections.ConfigDict(model.info["config"]) if model.info.get("config") else None
        items = expand_inputs(args.inputs, model.class_names, config)
    except (InputError, CheckpointError, MissingDataError, FileNotFoundError, ValueError) as e:
        return _fail([str(e)])
    skipped: list[str] = []

    def skip(line: str) -> None:
        from tqdm.auto import tqdm

        skipped.append(line)
        tqdm.write(line, file=sys.stderr)  # above the progress bar

    with bar("predicting", len(items), "img") as progress:
        rows, logits, labels = predict_rows(model, items, top_k=args.top_k, on_skip=skip, progress=progress)
    text = io.StringIO()
    writer = csv.DictWriter(text, COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    stats = summary(logits, labels)
    closing = f"# {len(rows)} images predicted, {len(skipped)} unreadable"
    if stats is not None:
        closing += f"; accuracy {stats['accuracy']:.4f} and ECE {stats['ece']:.4f} over {stats['n']} labelled"
    if args.out:
        from alpeft_jax.workdir import atomic_write

        atomic_write(args.out, text.getvalue())
        print(closing + f" — predictions in {args.out}")
    else:
        sys.stdout.write(text.getvalue())
        print(closing)
    return 0


def _fail(problems: Sequence[str]) -> int:
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
