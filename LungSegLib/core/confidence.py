"""How sure the network is, per slice and per lung, read from its own probabilities.

During inference the :class:`SliceScorer` sees every batch of model-grid probabilities (after the
network, before the way back to the input grid) and keeps a few numbers per slice and lung:

* ``area_px``: model-grid pixels the lung wins (argmax over background, right, left);
* ``expected_error_px``: sum over pixels of ``min(p, 1 - p)`` for that lung's probability ``p`` --
  the number of pixels a decision at 0.5 is expected to get wrong *if the probabilities were
  calibrated*; it is concentrated in the lung's boundary band, where ``p`` is neither 0 nor 1;
* ``entropy_px``: the 3-class softmax entropy (nats) summed over the lung's band (``p > 0.05``);
* ``margin_px``: ``1 - (top-1 - top-2 probability)`` summed over that band;
* ``flip_disagreement_px`` (test-time flip only): pixels where the plain pass and the left-right
  mirrored pass (right/left channels swapped back) disagree about the lung.

The per-slice *score* the review list ranks by is chosen by measurement on the shared cases
(``benchmarks/confidence.py``, results in ``benchmarks/results/confidence.md``): see
:data:`DEFAULT_SCORE` and :func:`SliceConfidence.scores`.

Everything is computed only on the rows and columns where some lung probability is >= 0.05 (the lungs'
box on the model grid) and only when asked: inference without a scorer does none of this.

With ``flip=True`` the slices the plain pass is unsure about (at most a fifth of the volume) also run
mirrored, and those slices are relabelled from the average of the two passes; ``flip_all=True``
mirrors every slice (the usual test-time augmentation: a whole second network pass).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from ..labels import LUNG_LABELS

#: A lung's "band": model-grid pixels where its probability exceeds this.
BAND_P = 0.05
#: The raw statistics kept per slice and lung (pixels on the model grid).
STATS = ("area_px", "expected_error_px", "entropy_px", "margin_px", "flip_disagreement_px")
#: Area (model-grid pixels) added to a lung's area before dividing by it, so tiny apex/base slices
#: do not get huge relative scores from a handful of uncertain pixels.
AREA_PRIOR_PX = 50.0
#: The score ranked by default (see :meth:`SliceConfidence.scores`; chosen in benchmarks/confidence.py).
DEFAULT_SCORE = "expected_dice_error"


@dataclass(frozen=True)
class ConfidenceOptions:
    """What the confidence pass does.

    Attributes:
        flip: also run the left-right mirrored pass, average the probabilities, and measure the
            agreement between the passes. By default only on the slices the plain pass is unsure
            about (expected Dice error >= ``flip_min_score``), at most ``flip_max_fraction`` of the
            volume's slices (in slice order), which bounds its cost to that share of a second pass.
        flip_all: run the mirrored pass on every slice (the classic test-time augmentation: about
            twice the network time).
    """

    flip: bool = False
    flip_all: bool = False
    flip_min_score: float = 0.02
    flip_max_fraction: float = 0.2


@dataclass
class SliceConfidence:
    """Per-slice, per-lung network statistics on the input grid's slices.

    Attributes:
        axis: the input array axis whose index is the axial slice (0 for the usual ``[k, j, i]``
            axial volume); ``stats[name][s, n]`` is slice ``s`` along that axis, lung ``n`` in
            :data:`LungSegLib.labels.LUNG_LABELS` order.
        stats: raw statistics in model-grid pixels (:data:`STATS`); ``flip_disagreement_px`` is NaN
            without the flip pass.
        pixel_mm: the model grid's pixel size (mm), to turn pixel counts into mm².
        flip: whether the flip pass ran.
        flipped: ``[n_slices]`` which slices the mirrored pass ran on.
    """

    axis: int
    stats: Dict[str, np.ndarray]
    pixel_mm: float
    flip: bool = False
    flipped: Optional[np.ndarray] = None

    @property
    def n_slices(self) -> int:
        return int(self.stats["area_px"].shape[0])

    def scores(self, name: str = DEFAULT_SCORE) -> np.ndarray:
        """``[n_slices, n_lungs]`` uncertainty (higher = check first) by one of these rules:

        * ``expected_dice_error``: expected_error / (2 x area + prior): about the Dice error a
          calibrated network expects on that slice (0 = sure);
        * ``expected_error_mm2``: the expected error area in mm² (absolute);
        * ``expected_error_sqrt``: expected error / sqrt(2 x area + prior), between the two;
        * ``entropy_rel`` / ``margin_rel``: entropy / margin band sums over (area + prior);
        * ``entropy_mm2``: the entropy band sum in mm²;
        * ``flip_rel`` / ``flip_mm2``: flip disagreement over (area + prior), or in mm² (flip only).
        """
        s = self.stats
        area = s["area_px"] + AREA_PRIOR_PX
        px2 = self.pixel_mm ** 2
        rules: Dict[str, Callable[[], np.ndarray]] = {
            "expected_dice_error": lambda: s["expected_error_px"] / (2 * s["area_px"] + AREA_PRIOR_PX),
            "expected_error_mm2": lambda: s["expected_error_px"] * px2,
            "expected_error_sqrt": lambda: s["expected_error_px"] / np.sqrt(2 * s["area_px"] + AREA_PRIOR_PX),
            "entropy_rel": lambda: s["entropy_px"] / area,
            "margin_rel": lambda: s["margin_px"] / area,
            "entropy_mm2": lambda: s["entropy_px"] * px2,
            "flip_rel": lambda: s["flip_disagreement_px"] / area,
            "flip_mm2": lambda: s["flip_disagreement_px"] * px2,
        }
        if name not in rules:
            raise ValueError(f"Unknown confidence score {name!r}; choose one of {sorted(rules)}.")
        if name.startswith("flip") and not self.flip:
            raise ValueError("The flip scores need the test-time flip pass (flip=True).")
        return rules[name]()

    def slice_scores(self, name: str = DEFAULT_SCORE) -> np.ndarray:
        """``[n_slices]``: the uncertainty of the slice (its less certain lung)."""
        return self.scores(name).max(axis=1)

    def slice_confidence(self) -> np.ndarray:
        """``[n_slices]`` confidence in 0..1 (1 = sure): one minus the expected Dice error of the
        slice's less certain lung."""
        return np.clip(1.0 - self.slice_scores("expected_dice_error"), 0.0, 1.0)

    def lung_confidence(self) -> Dict[str, float]:
        """Per lung (label key), confidence in 0..1: one minus the lung's expected Dice error over all
        slices (expected error pixels / 2 x area). NaN for a lung the network never found."""
        err = self.stats["expected_error_px"].sum(axis=0)
        area = self.stats["area_px"].sum(axis=0)
        out = {}
        for n, label in enumerate(LUNG_LABELS[:err.shape[0]]):
            out[label.key] = float(1.0 - err[n] / (2 * area[n])) if area[n] > 0 else float("nan")
        return out

    def flip_agreement(self) -> Optional[Dict[str, float]]:
        """Per lung, the Dice-like agreement of the plain and mirrored passes on the slices the mirrored
        pass ran on, 1 - disagreement / (2 x area); None without the flip pass."""
        if not self.flip:
            return None
        ran = np.isfinite(self.stats["flip_disagreement_px"])
        dis = np.where(ran, self.stats["flip_disagreement_px"], 0).sum(axis=0)
        area = np.where(ran, self.stats["area_px"], 0).sum(axis=0)
        return {label.key: (float(1.0 - dis[n] / (2 * area[n])) if area[n] > 0 else float("nan"))
                for n, label in enumerate(LUNG_LABELS[:dis.shape[0]])}

    def to_dict(self) -> Dict[str, object]:
        """JSON-ready summary: per-lung confidence and the per-slice confidence along ``axis``."""
        def clean(d):
            return None if d is None else {k: (None if not np.isfinite(v) else round(v, 4)) for k, v in d.items()}

        return {"axis": self.axis, "flip": self.flip, "score": DEFAULT_SCORE,
                "flipped_slices": None if self.flipped is None else [int(k) for k in np.flatnonzero(self.flipped)],
                "lung_confidence": clean(self.lung_confidence()),
                "flip_agreement": clean(self.flip_agreement()),
                "slice_confidence": [round(float(v), 4) for v in self.slice_confidence()]}


def _box(lungs: np.ndarray, level: float = BAND_P) -> Optional[Tuple[slice, slice]]:
    hot = (lungs > level).any(axis=(0, 1))
    rows, cols = np.flatnonzero(hot.any(axis=1)), np.flatnonzero(hot.any(axis=0))
    if rows.size == 0:
        return None
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def _hard(lungs: np.ndarray) -> np.ndarray:
    """Argmax over (background, lungs...) of ``[B, C, h, w]`` lung probabilities -> 0..C labels."""
    background = 1.0 - lungs.sum(axis=1, keepdims=True)
    return np.argmax(np.concatenate([background, lungs], axis=1), axis=1)


class SliceScorer:
    """Collects :class:`SliceConfidence` statistics batch by batch during inference.

    Args:
        n_slices: slices of the canonical stack.
        n_lungs: lung channels the network outputs (2; 1 for a binary model).
        pixel_mm: model-grid pixel size (mm).
        options: :class:`ConfidenceOptions`.
    """

    def __init__(self, n_slices: int, n_lungs: int, pixel_mm: float,
                 options: ConfidenceOptions = ConfidenceOptions()):
        self.options = options
        self.pixel_mm = float(pixel_mm)
        self.stats = {name: np.zeros((n_slices, n_lungs), np.float64) for name in STATS}
        self.stats["flip_disagreement_px"][:] = np.nan  # set on the slices the mirrored pass ran on
        self.flipped = np.zeros(n_slices, bool)
        #: the slices the network ran on when it skipped some (:meth:`score_network_slices`); None: every slice
        self._network: Optional[np.ndarray] = None
        self._budget = int(math.ceil(options.flip_max_fraction * n_slices))
        self._queue: List[Tuple[int, np.ndarray, np.ndarray]] = []
        #: ``writer(canonical indices, [n, C, S, S] lung probabilities)`` relabels those slices (set by
        #: inference; the selective flip pass calls it once the mirrored pass of queued slices has run)
        self.writer: Optional[Callable[[np.ndarray, np.ndarray], None]] = None

    def observe(self, start: int, x: np.ndarray, lungs: np.ndarray, body: np.ndarray,
                predict: Callable[[np.ndarray], np.ndarray], binary: bool) -> np.ndarray:
        """Score one batch; returns the lung probabilities inference should use now (averaged with the
        mirrored pass with ``flip_all``; the selective flip queues its slices and relabels them later
        through :attr:`writer`).

        Args:
            start: canonical index of the batch's first slice.
            x: ``[B, S, S, channels]`` model input (mirrored along its columns, axis 2); lungs: ``[B, C, S, S]`` lung probabilities (0 off the body);
            body: ``[B]`` which slices show a body; predict: the network; binary: 1-channel model.
        """
        indices = start + np.arange(len(lungs))
        if self.options.flip and self.options.flip_all:
            lungs = self._mirror_average(indices, x, lungs, body, predict, binary)
        self._score(start, lungs)
        if self.options.flip and not self.options.flip_all and self._budget > 0:
            stop = start + len(lungs)
            err, area = self.stats["expected_error_px"][start:stop], self.stats["area_px"][start:stop]
            unsure = (err / (2 * area + AREA_PRIOR_PX)).max(axis=1) >= self.options.flip_min_score
            for i in np.flatnonzero(unsure & body)[:self._budget]:
                self._queue.append((int(indices[i]), x[i].copy(), lungs[i].copy()))
            self._budget -= min(self._budget, int((unsure & body).sum()))
            if len(self._queue) >= getattr(predict, "batch_size", 8):
                self._flush(predict, binary)
        return lungs

    def score_network_slices(self, indices: np.ndarray, lungs: np.ndarray) -> None:
        """Score the slices ``indices`` when the network skipped the slices between them (the slice step;
        not with the flip, whose mirrored pass needs every slice's input). :meth:`finish` gives each
        skipped slice its neighbours' statistics, linearly interpolated.

        Not the statistics of their interpolated probabilities: where a boundary moves between the two
        neighbours it blurs into a band of unsure pixels, and the slices between would look less certain
        than either."""
        if self.options.flip:
            raise ValueError("The test-time flip needs the network on every slice.")
        if self._network is None:
            self._network = np.zeros(self.flipped.shape[0], bool)
        for index, slice_lungs in zip(np.asarray(indices, dtype=np.int64), lungs):
            self._network[index] = True
            self._score_slice(int(index), slice_lungs[None])

    def finish(self, predict: Callable[[np.ndarray], np.ndarray], binary: bool) -> None:
        """Run the mirrored pass on the slices still queued (after the last batch); statistics for the
        slices the network skipped."""
        if self._queue:
            self._flush(predict, binary)
        if self._network is not None and self._network.any() and not self._network.all():
            ran, skipped = np.flatnonzero(self._network), np.flatnonzero(~self._network)
            for name in STATS:
                if name != "flip_disagreement_px":  # NaN without the flip
                    for c in range(self.stats[name].shape[1]):
                        self.stats[name][skipped, c] = np.interp(skipped, ran, self.stats[name][ran, c])

    def _flush(self, predict, binary: bool) -> None:
        indices = np.array([q[0] for q in self._queue])
        x = np.stack([q[1] for q in self._queue])
        lungs = np.stack([q[2] for q in self._queue])
        self._queue = []
        averaged = self._mirror_average(indices, x, lungs, np.ones(len(indices), bool), predict, binary)
        if self.writer is not None:
            self.writer(indices, averaged)

    def _mirror_average(self, indices: np.ndarray, x: np.ndarray, lungs: np.ndarray, body: np.ndarray,
                        predict, binary: bool) -> np.ndarray:
        """The mirrored pass of ``x`` (mirrored back, right/left swapped back), averaged with ``lungs``;
        records the two passes' disagreement for ``indices``."""
        mirrored = predict(np.ascontiguousarray(x[:, :, ::-1]))
        mirrored = mirrored if binary else mirrored[:, 1:]
        # mirror back; the mirrored image's "right lung" is the patient's left lung
        mirrored = mirrored[:, :, :, ::-1] if binary else mirrored[:, ::-1, :, ::-1]
        mirrored = np.array(mirrored, dtype=np.float32)
        mirrored[~body] = 0
        self.stats["flip_disagreement_px"][indices] = self._disagreement(lungs, mirrored)
        self.flipped[indices] = True
        return 0.5 * (lungs + mirrored)

    def _score(self, start: int, lungs: np.ndarray) -> None:
        # slice by slice, each on its own box: the expected error sums min(p, 1 - p) over the box, so a box
        # shared by the batch added other slices' surroundings (and a slice's score depended on the batch
        # size: the worker's 4 and the command line's 8 ranked different slices first)
        for i in range(len(lungs)):
            self._score_slice(start + i, lungs[i:i + 1])

    def _score_slice(self, index: int, lungs: np.ndarray) -> None:
        box = _box(lungs)
        if box is None:
            return
        p = lungs[:, :, box[0], box[1]]
        hard = _hard(p)
        background = np.clip(1.0 - p.sum(axis=1), 0.0, 1.0)
        eps = 1e-7
        entropy = -background * np.log(background + eps)
        top1 = background.copy()
        low = background.copy()
        for c in range(p.shape[1]):
            pc = p[:, c]
            entropy -= pc * np.log(pc + eps)
            np.maximum(top1, pc, out=top1)
            np.minimum(low, pc, out=low)
        if p.shape[1] == 1:
            top2 = 1.0 - top1  # two classes: the runner-up is the other
        else:
            top2 = 1.0 - top1 - low  # three classes: what is neither the largest nor the smallest
        unsure = 1.0 - (top1 - top2)
        for c in range(p.shape[1]):
            pc = p[:, c]
            band = pc > BAND_P
            self.stats["area_px"][index, c] = (hard == c + 1).sum()
            self.stats["expected_error_px"][index, c] = np.minimum(pc, 1.0 - pc).sum()
            self.stats["entropy_px"][index, c] = (entropy * band).sum()
            self.stats["margin_px"][index, c] = (unsure * band).sum()

    @staticmethod
    def _disagreement(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``[B, C]`` pixels where the two passes' argmax labels differ about each lung."""
        box = _box(np.maximum(a, b))
        if box is None:
            return np.zeros(a.shape[:2])
        ha, hb = _hard(a[:, :, box[0], box[1]]), _hard(b[:, :, box[0], box[1]])
        return np.stack([((ha == c + 1) != (hb == c + 1)).sum(axis=(1, 2)) for c in range(a.shape[1])],
                        axis=1)

    def result(self, axis: int, flipped_axis: bool) -> SliceConfidence:
        """The statistics on the input array's slice order: ``axis`` is the input axis that is the
        canonical slice axis, ``flipped_axis`` whether the canonical order runs against it."""
        order = (lambda v: v[::-1].copy()) if flipped_axis else (lambda v: v)
        stats = {k: order(v) for k, v in self.stats.items()}
        return SliceConfidence(axis=int(axis), stats=stats, pixel_mm=self.pixel_mm, flip=self.options.flip,
                               flipped=order(self.flipped))


__all__ = ["ConfidenceOptions", "DEFAULT_SCORE", "SliceConfidence", "SliceScorer", "STATS"]
