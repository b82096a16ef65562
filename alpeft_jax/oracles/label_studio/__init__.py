"""Label Studio oracle: each round's selection becomes tasks in a Label Studio project, pre-annotated with the
model's guess; the run continues once every task has an annotation.

    label-studio start --no-browser -p 8080
    export LABEL_STUDIO_API_KEY=...        # a personal access token or a legacy token (Account & Settings)
    python -m alpeft_jax.main ... --config.oracle=label_studio --config.label_studio.url=http://127.0.0.1:8080

Talks to the server through `label-studio-sdk` (`pip install 'alpeft_jax[label]'`), which handles both token kinds
(a personal access token is exchanged for a short-lived Bearer token). The settings are `config.label_studio`:

- project: "" makes (or finds again) a project for this run, titled "<run name> (<run key>)"; a number or a title
  names an existing project (a title not found is created). New projects get an image-classification labelling
  config with one choice per class; an existing project's config must offer every class.
- images: "inline" sends PNG data URIs of at most `thumbnail` pixels; "local" points tasks at files served by
  Label Studio's local storage (the server shares this file system; `local_root` = its LOCAL_FILES_DOCUMENT_ROOT;
  images without a file are written as PNGs to `local_root`/alpeft_jax/<run key>/; the run registers the
  storage); "url" points at `image_url_prefix` + the file path on your own file server (images without a file
  go inline).
- wait_seconds: 0 stops the run at once (rerun the same command when the tasks are labelled); > 0 polls every
  `poll_seconds` for up to that long before stopping the same way; < 0 waits without limit. Ctrl-C while waiting stops
  the same way: one line, nothing lost, the same command continues.

Nothing lost, nothing twice. Every task carries our example id (`alpeft_id`), the round and a key of this run
(`alpeft_run`, kept in DIR/label_studio.json); before importing, the project is searched for this run's tasks, so a
rerun never imports an example twice, whatever happened between the import and the record. Task ids are written to
DIR/round_<r>/label_studio.json after each bulk import, and the labels with the round's facts (annotators, lead
times, accepted pre-annotations) the moment they are read: a round already read is never asked for again.

Rules for what annotators do:
- a skipped task (every annotation cancelled or empty): with `skipped="exclude"` (the default) the annotator could
  not tell, and the example is excluded from the run (never asked again, never trained on, counted as
  `n_excluded`); with `skipped="ask"` it counts as not labelled and the stop message lists it, to be labelled in
  Label Studio;
- several annotations of one task (or several tasks of one example): `multiple="latest"` takes the most recently
  updated annotation, `"majority"` the most frequent class, ties going to the class annotated last;
- a class not among the dataset's classes, or several classes in one annotation: an error naming the task, and
  nothing is recorded;
- a task deleted in Label Studio is imported again on the next request, with a warning;
- server down, wrong URL or token, missing project: one error naming the URL and the fix; the run's state is
  unchanged and the same command resumes.

The package, by seam: `settings` (the `label_studio.*` values, checked), `rules` (which annotation counts, latest
and majority, skipped and deleted tasks, unknown classes: pure functions over the API's dicts), `api` (the server
through the SDK), `images` (what a task's image field holds) and `oracle` (the run's and rounds' records, tying them
together).
"""

from __future__ import annotations

from typing import Any

from alpeft_jax.oracles.label_studio.oracle import RUN_FILE, LabelStudioOracle
from alpeft_jax.oracles.label_studio.rules import label_config
from alpeft_jax.oracles.label_studio.settings import Settings

__all__ = ["DEFAULTS", "RUN_FILE", "LabelStudioOracle", "Settings", "label_config"]


def __getattr__(name: str) -> Any:
    """`DEFAULTS`: the run config's default `label_studio` section, read when asked for."""
    if name == "DEFAULTS":
        from alpeft_jax.oracles.label_studio.settings import defaults

        return defaults()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
