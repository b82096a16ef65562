"""The README's picture of a pool-mode project: the Data Manager's view of the whole pool sorted by the model's
score (round 1's picks on top, with their round and rank), taken by a headless browser against the tests' server.

    python tests/_label_studio_screenshot.py docs/label_studio_pool.png [--chromium /usr/bin/chromium]

A pool of 200 scikit-learn digits goes into a pool-mode project; round 0 asks for 20 random digits, a logistic
regression trained on their true labels gives round 1's probabilities, and entropy picks round 1's 10. Needs
playwright (`pip install playwright`) and a Chromium (`python -m playwright install chromium`, or a system one
given with --chromium).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import _label_studio_server as ls_server  # noqa: E402

from alpeft_jax import oracles, strategies  # noqa: E402
from alpeft_jax.data import ArraySource  # noqa: E402
from alpeft_jax.oracles.label_studio import pool as pool_mode  # noqa: E402


def main() -> int:
    """Make the project and take the picture."""
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--chromium", default="")
    args = p.parse_args()
    from playwright.sync_api import sync_playwright
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    digits = load_digits()
    n = 200
    x = digits.images[:n]
    images = np.repeat(np.repeat((x * 255 / 16).astype(np.uint8), 4, 1), 4, 2)[..., None].repeat(3, -1)
    names = [str(i) for i in range(10)]
    src = ArraySource(images, digits.target[:n], names, ids=np.arange(n))
    view = oracles.PoolView(src, np.arange(n), names)
    server = ls_server.start(Path(tempfile.mkdtemp(prefix="ls_shot_")))
    try:
        wd = tempfile.mkdtemp(prefix="ls_shot_run_")
        o = oracles.LabelStudioOracle(view, wd, run_name="digits", token=server.token, url=server.url, mode="pool")
        rng = np.random.default_rng(0)
        picks0 = rng.choice(n, 20, replace=False)
        labeled = np.zeros(n, bool)
        o.publish(0, picks0, None, None, labeled)
        labeled[picks0] = True
        model = LogisticRegression(max_iter=2000).fit(x[picks0].reshape(20, -1), digits.target[picks0])
        probs = np.zeros((n, 10), np.float32)
        probs[:, model.classes_] = model.predict_proba(x.reshape(n, -1))
        logits = np.log(np.maximum(probs, 1e-9))
        scores = strategies.uncertainty.row_scores("entropy", {"logits": logits})
        masked = np.where(labeled, -np.inf, scores)
        picks1 = np.argsort(-masked, kind="stable")[:10]
        o.publish(1, picks1, scores, probs, labeled)
        pid = o.project()["id"]
        import json

        tabs = json.loads(server.request("GET", f"/api/dm/views/?project={pid}"))
        tab = next(v["id"] for v in tabs if v["data"]["title"] == pool_mode.POOL_VIEW)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium or None, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1500, "height": 820})
            page.goto(f"{server.url}/user/login/")
            page.fill("input[name=email]", ls_server.USERNAME)
            page.fill("input[name=password]", ls_server.PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_load_state("networkidle")
            page.goto(f"{server.url}/projects/{pid}/data?tab={tab}")
            page.wait_for_load_state("networkidle")
            page.wait_for_timeout(4000)
            page.screenshot(path=args.out)
            browser.close()
        print(f"wrote {args.out} (project {pid}, view {tab})")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
