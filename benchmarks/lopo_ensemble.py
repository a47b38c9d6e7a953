"""Would averaging two leave-one-out fold models (two seeds) beat one? Scored like ``lungseg evaluate``.

For each case, the fold models that never saw it, trained with different seeds (``RUN/lopo-<case>/best.keras``
under each ``--runs`` folder), segment it alone and together (their softmax outputs averaged per slice, every
other step the default pipeline's, float32), and ``lungseg evaluate``'s scoring compares each with the reference.
A measurement, not a feature: two networks cost twice the network time.

    python benchmarks/lopo_ensemble.py --runs /work/lungseg_runs/pc_s0 /work/lungseg_runs/pc_s2 \
        --name lopo_position/ensemble
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from LungSegLib.api import LungSegmenter  # noqa: E402
from LungSegLib.core import inference  # noqa: E402
from LungSegLib.core.model import load_model  # noqa: E402
from LungSegLib.evaluation.evaluate import evaluate_model  # noqa: E402


class _Average:
    """The fold models' predictors as one: the mean of their outputs."""

    def __init__(self, predictors):
        self.predictors = predictors
        self.batch_size = predictors[0].batch_size

    def __call__(self, x):
        return sum(np.asarray(p(x)) for p in self.predictors) / len(self.predictors)


def score(models, data: Path, case: str) -> dict:
    own = inference._predictor
    predictors = [own(m, 8, "float32") for m in models]
    if len(models) > 1:
        inference._predictor = lambda model, batch_size, dtype: _Average(predictors)
    try:
        report, _ = evaluate_model(LungSegmenter(models[0], compute_dtype="float32"), data, [case])
    finally:
        inference._predictor = own
    return {s.lung: round(float(s.dice), 4) for s in report.cases[0].lungs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", required=True, help="folders holding lopo-<case>/best.keras, one per seed")
    p.add_argument("--data", default=os.environ.get("LUNGSEG_DATA_DIR", str(HERE.parent.parent / "shared" / "data")))
    p.add_argument("--name", default="lopo_ensemble")
    opts = p.parse_args()
    data = Path(opts.data) / "cases"
    rows = []
    for case in sorted(d.name for d in data.iterdir() if d.is_dir()):
        models = [load_model(Path(r) / f"lopo-{case}" / "best.keras") for r in opts.runs]
        row = {"case": case}
        for run, model in zip(opts.runs, models):
            row[Path(run).name] = score([model], data, case)
        row["average"] = score(models, data, case)
        rows.append(row)
        print(row, flush=True)
    names = [Path(r).name for r in opts.runs] + ["average"]
    lines = [f"# Two seeds' fold models averaged (leave-one-out)\n\n`python benchmarks/lopo_ensemble.py --runs "
             f"{' '.join(opts.runs)} --name {opts.name}`; Dice right / left as `lungseg evaluate` scores it.\n",
             "| left-out case | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for r in rows:
        lines.append(f"| {r['case']} | " + " | ".join(f"{r[n]['right lung']:.4f} / {r[n]['left lung']:.4f}"
                                                       for n in names) + " |")
    means = {n: [np.mean([r[n][lung] for r in rows]) for lung in ("right lung", "left lung")] for n in names}
    lines.append("| **mean** | " + " | ".join(f"**{means[n][0]:.4f} / {means[n][1]:.4f}**" for n in names) + " |")
    out = HERE / "results" / opts.name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
