"""Do two versions of the code draw the same augmented training slices? A check that today's default
augmentation still trains the bundled model's recipe (same slices in the same order, bit for bit).

    python benchmarks/recipe_batches.py --commit 50463a7 --slices 6400

exports the older commit's ``LungSegLib`` (``git archive``), draws ``--slices`` augmented slices (seed 0,
epoch 0: what the first ``slices / 8`` training batches are made of) from the shared cases with each
version in its own process, and reports how many differ. 6400 slices are all 16 x 50 batches of 8.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

DRAW = r"""
import hashlib, json, sys
from pathlib import Path
import numpy as np
from LungSegLib.training import train as T
from LungSegLib.training.augment import Augmenter
from LungSegLib.training.dataset import SliceSampler
cfg = T.TrainConfig(n_classes=3, seed=0)
_split, cases, _val = T._prepared_cases(Path(sys.argv[1]), Path(sys.argv[2]), cfg.spec, (), None, None,
                                        lambda *a: None)
sampler = SliceSampler(cases, 3, seed=0, lung_fraction=cfg.lung_fraction,
                       augment=Augmenter(cfg.augment_config, cfg.hu_window))
out = []
for _ in range(int(sys.argv[3])):
    image, labels = sampler.draw()
    out.append(hashlib.sha256(np.ascontiguousarray(image).tobytes()
                              + np.ascontiguousarray(labels).tobytes()).hexdigest())
json.dump(out, sys.stdout)
"""


def draw(code_root: Path, cases: Path, cache: Path, n: int) -> list:
    env = dict(os.environ, PYTHONPATH=str(code_root), TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, "-c", DRAW, str(cases), str(cache), str(n)], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commit", default="50463a7", help="the older code (default: the bundled model's)")
    ap.add_argument("--slices", type=int, default=6400)
    ap.add_argument("--data", default=os.environ.get("LUNGSEG_DATA_DIR", str(REPO.parent / "shared" / "data")))
    args = ap.parse_args()
    cases = Path(args.data) / "cases"
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        old.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.commit, "LungSegLib"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        then = draw(old, cases, Path(tmp) / "cache_old", args.slices)
        now = draw(REPO, cases, Path(tmp) / "cache_now", args.slices)
    differ = sum(a != b for a, b in zip(then, now))
    print(f"{args.slices} augmented slices, code of {args.commit} vs this checkout: {differ} differ")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
