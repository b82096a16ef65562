"""The command line's logging: INFO by default (rounds, not epochs), `--verbosity` honoured."""

import os

from absl import flags
from absl import logging as absl_logging

from alpeft_jax import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "configs", "tiny.py")


def test_verbosity_flag_is_honoured(tmp_path):
    before = absl_logging.get_verbosity()
    try:
        for given, expected in (([], absl_logging.INFO), (["--verbosity=1"], absl_logging.DEBUG)):
            absl_logging.set_verbosity(absl_logging.WARNING)
            flags.FLAGS.unparse_flags()
            flags.FLAGS(["prog", f"--config={TINY}", f"--workdir={tmp_path}", *given])
            main.configure_logging()
            assert absl_logging.get_verbosity() == expected, given
            # the per-epoch lines are debug lines: shown only with --verbosity=1
            assert absl_logging.level_debug() == (expected == absl_logging.DEBUG)
    finally:
        flags.FLAGS.unparse_flags()
        absl_logging.set_verbosity(before)


def test_the_last_printed_line_says_test_or_cv_accuracy():
    row = {"round": 2, "n_labeled": 30, "accuracy": 0.8125, "ece": 0.0412}
    assert main.result_line(dict(row, evaluation="test"), "runs/a") == (
        "round 2: 30 labels, test accuracy 81.25%, test ECE 4.12% — results in runs/a/results.jsonl"
    )
    assert main.result_line(dict(row, evaluation="cv", cv_folds=5), "runs/a") == (
        "round 2: 30 labels, 5-fold cv accuracy 81.25%, 5-fold cv ECE 4.12% — results in runs/a/results.jsonl"
    )
    assert main.result_line(row, "runs/a").startswith("round 2: 30 labels, test accuracy")  # rows before cv existed
