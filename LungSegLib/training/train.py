"""Training the LungSeg U-Net on a folder of CT + labelmap cases (``lungseg train``).

A run directory holds everything about one training run:

* ``config.json`` — the recipe and the train/validation split (read back by ``--resume``);
* ``last.keras`` + ``state.json`` — the full model with optimizer state after the last epoch, the
  best score so far and the early-stopping counter, so an interrupted run continues where it was;
* ``best.keras`` + ``best.json`` — the inference model (no optimizer) of the best epoch and its
  model card (:func:`LungSegLib.core.model.write_card`), loadable by :func:`LungSegLib.core.model.load_model`;
* ``best.weights.npz`` + ``best.weights.json`` — the same weights exported as named arrays
  (:mod:`LungSegLib.training.export`): the form to ship, loadable with any supported Keras version;
* ``log.csv`` — one row per epoch (loss, learning rate, validation Dice per lung);
* ``cache/`` — the cases resampled onto the model grid (unless ``cache_dir`` points elsewhere).

"Best" is the highest mean validation Dice of the lungs when there are validation cases, otherwise
the lowest training loss.
"""
from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import __version__
from .augment import AugmentConfig, Augmenter
from .dataset import CachedCase, SliceSampler, find_cases, make_split, model_labels, prepare_case, tf_dataset
from .export import export_model
from ..errors import InputError, OutputError
from ..core.atomic import atomic_path, atomic_write_text
from ..core.model import sha256_of, write_card
from ..core.preprocess import ModelGridSpec
from ..defaults import GRID_PIXEL_MM, GRID_SIZE, HU_WINDOW, TRAIN_BATCH_SIZE
from ..evaluation.metrics import dice_from_counts
from ..labels import BINARY_CLASS_NAMES, CLASS_NAMES, LUNG_LABELS


@dataclass
class TrainConfig:
    """The training recipe. Sizes in pixels of the model grid; ``max_minutes`` caps wall-clock time
    (checked after each epoch, 0 = no cap). ``select`` is which epoch becomes ``best.keras``: "best"
    (the monitored score) or "last" (when the validation cases are really a test set, as in
    leave-one-patient-out, choosing an epoch on them would flatter the score). ``init`` starts from
    existing weights ("bundled" or a model path; :mod:`.finetune`) instead of random ones; the
    input grid and architecture then come from that model. ``position_channel`` (default) gives the network the
    column position as an extra channel (:class:`LungSegLib.core.unet.PositionChannel`): without it, one seed in
    three never learned the sides (``benchmarks/results/lopo_position/``)."""

    n_classes: int = 3
    loss: str = "ce_dice"
    base_filters: int = 8
    depth: int = 4
    epochs: int = 40
    steps_per_epoch: int = 50
    batch_size: int = TRAIN_BATCH_SIZE
    learning_rate: float = 1e-3
    min_learning_rate: float = 5e-5
    patience: int = 10
    seed: int = 0
    lung_fraction: float = 0.8
    augment: bool = True
    max_minutes: float = 0.0
    select: str = "best"
    size: int = GRID_SIZE
    pixel_mm: float = GRID_PIXEL_MM
    hu_window: Tuple[float, float] = HU_WINDOW
    context_mm: float = 0.0
    position_channel: bool = True
    init: str = ""
    augment_config: AugmentConfig = field(default_factory=AugmentConfig)

    @property
    def spec(self) -> ModelGridSpec:
        return ModelGridSpec(self.size, self.pixel_mm, tuple(self.hu_window), float(self.context_mm))

    @property
    def classes(self) -> Tuple[str, ...]:
        return BINARY_CLASS_NAMES if self.n_classes == 1 else CLASS_NAMES

    def to_json(self) -> Dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        aug = values.pop("augment_config", {}) or {}
        # runs saved by earlier versions kept a copy of the HU window here; the recipe's hu_window is the one
        aug_known = {f.name for f in fields(AugmentConfig)}
        aug = {k: tuple(v) if isinstance(v, list) else v for k, v in aug.items() if k in aug_known}
        values["hu_window"] = tuple(values.get("hu_window", HU_WINDOW))
        return cls(augment_config=AugmentConfig(**aug), **values)


@dataclass
class TrainResult:
    """Where a finished run left its outputs, and how it went."""

    run_dir: Path
    best_model: Path
    card: Path
    log: Path
    epochs_run: int
    best_epoch: int
    best_score: float
    monitor: str
    stopped_early: bool
    #: the best epoch's exported weights (``best.weights.npz``, card beside it): the file to ship
    best_weights: Optional[Path] = None
    #: the kept model's Dice per lung on its own training slices (model grid, no augmentation)
    fit_dice: Dict[str, float] = field(default_factory=dict)
    #: lungs it did not learn (fit Dice below :data:`MIN_FIT_DICE`): the model is not fit for use
    unlearned: List[str] = field(default_factory=list)


#: A lung whose Dice on the model's own training slices stays below this was not learned. It happens: one
#: seed of the bundled recipe's 16-epoch schedule never learned to tell the left lung from the right.
MIN_FIT_DICE = 0.5


def dice_counts(pred: np.ndarray, true: np.ndarray, n_classes: int) -> np.ndarray:
    """(intersection, predicted, true) voxel counts per lung label, shape (n_lungs, 3)."""
    labels = (1,) if n_classes == 1 else tuple(lung.value for lung in LUNG_LABELS)
    return np.array([[np.count_nonzero((pred == c) & (true == c)), np.count_nonzero(pred == c),
                      np.count_nonzero(true == c)] for c in labels], dtype=np.int64)


def predict_labels(keras_model, images: np.ndarray, n_classes: int) -> np.ndarray:
    """Model-grid labels (B, S, S) from network input (B, S, S, channels) in [0, 1]."""
    probs = keras_model.predict_on_batch(np.asarray(images, dtype=np.float32))
    probs = np.asarray(probs)
    if n_classes == 1:
        return (probs[..., 0] > 0.5).astype(np.uint8)
    return np.argmax(probs, axis=-1).astype(np.uint8)


def validation_counts(keras_model, cases: Sequence[CachedCase], n_classes: int,
                   batch_size: int = TRAIN_BATCH_SIZE) -> Dict[str, np.ndarray]:
    """Per case, :func:`dice_counts` over all its model-grid slices (no augmentation)."""
    out = {}
    for case in cases:
        counts = np.zeros((1 if n_classes == 1 else len(LUNG_LABELS), 3), dtype=np.int64)
        for start in range(0, len(case), batch_size):
            pred = predict_labels(keras_model, case.image[start:start + batch_size], n_classes)
            counts += dice_counts(pred, model_labels(case.labels[start:start + batch_size], n_classes), n_classes)
        out[case.case_id] = counts
    return out


def _run_state_callback():
    import keras

    class RunState(keras.callbacks.Callback):
        """Validation Dice, best/last checkpoints, early stopping and the wall-clock cap, per epoch.

        Also appends the epoch's row to ``log.csv`` (Keras' CSVLogger would invent empty ``val_*``
        columns for runs without validation).
        """

        def __init__(self, run: "_Run"):
            super().__init__()
            self.run = run
            self.started = time.monotonic()
            self.stopped_early = False

        def on_epoch_end(self, epoch, logs=None):
            logs = logs if logs is not None else {}
            run = self.run
            lr = self.model.optimizer.learning_rate
            logs["lr"] = float(lr(self.model.optimizer.iterations) if callable(lr) else np.asarray(lr))
            logs["minutes"] = (time.monotonic() - self.started) / 60  # since this (re)start
            if run.val_cases:
                per_case = validation_counts(self.model, run.val_cases, run.config.n_classes, run.config.batch_size)
                total = sum(per_case.values())
                dice = dice_from_counts(total[:, 0], total[:, 1], total[:, 2])
                names = ("lung",) if run.config.n_classes == 1 else tuple(lung.key for lung in LUNG_LABELS)
                for name, value in zip(names, dice):
                    logs[f"val_dice_{name}"] = float(value)
                logs["val_dice"] = float(np.mean(dice))
            score = float(logs[run.monitor])
            state = run.state
            improved = (run.config.select == "last" or state.get("best") is None
                        or (score > state["best"] if run.maximize else score < state["best"]))
            if improved:
                state.update(best=score, best_epoch=epoch + 1, wait=0,
                             best_logs={k: float(v) for k, v in logs.items()})
                run.save_best(self.model)
            else:
                state["wait"] = state.get("wait", 0) + 1
            state["epoch"] = epoch + 1
            run.save_last(self.model)
            run.append_log(epoch, logs)
            if run.config.patience and state["wait"] >= run.config.patience:
                self.stopped_early = True
                self.model.stop_training = True
            cap = run.config.max_minutes
            if cap and time.monotonic() - self.started > cap * 60:
                self.model.stop_training = True

    return RunState


class _Run:
    """The files of one run directory and the model-saving steps."""

    def __init__(self, run_dir: Path, config: TrainConfig, split, cases_dir: Path,
                 train_cases: List[CachedCase], val_cases: List[CachedCase], state: Dict):
        self.dir = run_dir
        self.config = config
        self.split = split
        self.cases_dir = cases_dir
        self.train_cases = train_cases
        self.val_cases = val_cases
        self.state = state
        self.monitor = "val_dice" if val_cases else "loss"
        self.maximize = bool(val_cases)

    @property
    def best_path(self) -> Path:
        return self.dir / "best.keras"

    @property
    def weights_path(self) -> Path:
        """The best epoch's exported weights (``best.weights.npz`` + ``best.weights.json``)."""
        return self.dir / "best.weights.npz"

    def append_log(self, epoch: int, logs: Dict) -> None:
        path = self.dir / "log.csv"
        if path.is_file():
            with open(path, newline="") as f:
                header = next(csv.reader(f))
        else:
            header = ["epoch"] + sorted(logs)
        with open(path, "a", newline="") as f:
            writer = csv.writer(f)
            if f.tell() == 0:
                writer.writerow(header)
            row = dict(logs, epoch=epoch)
            writer.writerow([row.get(k, "") for k in header])

    def save_last(self, keras_model) -> None:
        with atomic_path(self.dir / "last.keras") as tmp:
            keras_model.save(tmp)
        _write_json(self.dir / "state.json", self.state)

    def save_best(self, keras_model) -> None:
        import keras

        # The shipped file is the bare network: no optimizer state or custom loss to deserialise.
        clean = keras.Model.from_config(keras_model.get_config())  # clone_model would copy the optimizer
        clean.set_weights(keras_model.get_weights())
        with atomic_path(self.best_path) as tmp:
            clean.save(tmp)
        card = self.card(keras_model)
        write_card(self.best_path, card)
        # ...and the same weights in the shipped, Keras-version-independent format (named arrays)
        export_model(keras_model, card, self.weights_path,
                     source={"file": self.best_path.name, "sha256": sha256_of(self.best_path),
                             "keras_version": card["keras_version"]})

    def card(self, keras_model) -> Dict:
        from ..core.unet import UNetArchitecture, count_flops

        cfg = self.config
        state = self.state
        return {
            "name": self.dir.name,
            "classes": list(cfg.classes),
            "input": {"size": cfg.size, "pixel_mm": cfg.pixel_mm, "hu_window": list(cfg.hu_window),
                      "context_mm": cfg.context_mm,
                      "noise_trigger_hu": cfg.spec.noise_trigger_hu, "noise_target_hu": cfg.spec.noise_target_hu,
                      "preprocessing": "canonical axial stack (S, P, L), each slice resampled to the "
                                       "size x size grid of pixel_mm centred on the body, HU window -> [0, 1], "
                                       "slices noisier than noise_trigger_hu (HU SD) smoothed to noise_target_hu"
                                       + ("; channels: the CT context_mm below, the slice, the CT context_mm "
                                          "above (interpolated between slices)" if cfg.context_mm else "")},
            "architecture": dict(UNetArchitecture(cfg.size, cfg.n_classes, cfg.base_filters, cfg.depth,
                                                  in_channels=cfg.spec.channels,
                                                  position_channel=cfg.position_channel).to_card(),
                                 parameters=int(keras_model.count_params()),
                                 gflop_per_slice=round(count_flops(keras_model) / 1e9, 3)),
            "training": {"loss": cfg.loss, "optimizer": "Adam", "learning_rate": cfg.learning_rate,
                         "schedule": f"cosine decay to {cfg.min_learning_rate} over epochs x steps",
                         "batch_size": cfg.batch_size, "steps_per_epoch": cfg.steps_per_epoch,
                         "epochs_planned": cfg.epochs, "epoch": state.get("best_epoch"),
                         "seed": cfg.seed, "lung_fraction": cfg.lung_fraction, "init": cfg.init or None,
                         "augmentation": asdict(cfg.augment_config) if cfg.augment else None,
                         "selected_by": ("last epoch" if cfg.select == "last"
                                         else f"{'max' if self.maximize else 'min'} {self.monitor}"),
                         "best_logs": state.get("best_logs", {}),
                         "environment": training_environment()},
            "data": {"cases_dir": str(self.cases_dir), "train_cases": list(self.split.train),
                     "val_cases": list(self.split.val),
                     "train_patients": sorted({c.patient_id for c in self.train_cases}),
                     "train_slices": int(sum(len(c) for c in self.train_cases))},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "lungseg_version": __version__,
            "keras_version": __import__("keras").__version__,
        }


def training_environment() -> Dict[str, object]:
    """The Python, library versions and CPU a model was trained with (its card's ``training.environment``).

    Float rounding differs between them, and training follows it: the same recipe, seed and cases gave a
    leave-one-out fold that labelled colon gas left lung on one machine and not on another, with training
    losses equal to three decimals (``benchmarks/results/lopo_position/rerun_stop16``). A rerun is only
    comparable where these match.
    """
    import platform

    import keras
    import scipy
    import tensorflow as tf

    cpu = platform.processor()
    try:  # Linux names the CPU model here (platform.processor() is often just the architecture)
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "scipy": scipy.__version__, "machine": platform.machine(),
            "cpu": cpu or None, "cpu_count": os.cpu_count()}


def _write_json(path: Path, data: Dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def _compile(keras_model, config: TrainConfig) -> None:
    import keras

    from .losses import SegmentationLoss

    schedule = keras.optimizers.schedules.CosineDecay(
        config.learning_rate, decay_steps=max(1, config.epochs * config.steps_per_epoch),
        alpha=config.min_learning_rate / config.learning_rate)
    keras_model.compile(optimizer=keras.optimizers.Adam(schedule),
                        loss=SegmentationLoss(config.loss, config.n_classes))


def _run_setup(run_dir: Path, config: Optional[TrainConfig], val: Sequence[str],
               split_file: Optional[os.PathLike], resume: bool, epochs: Optional[int]):
    """The recipe, validation choice and state of a new run, or of the run in ``run_dir`` to resume:
    ``(config, val, split_file, state, the saved training cases or None)``; refuses a bad recipe."""
    from .losses import SegmentationLoss

    saved_train = None
    if resume:
        if not (run_dir / "config.json").is_file() or not (run_dir / "last.keras").is_file():
            raise InputError(f"{run_dir} holds no run to resume (config.json and last.keras are missing).")
        saved = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        config = TrainConfig.from_json(saved["config"])
        val, split_file, saved_train = saved["split"]["val"], None, saved["split"]["train"]
        state = json.loads((run_dir / "state.json").read_text(encoding="utf-8"))
        if epochs:
            config.epochs = int(epochs)
    else:
        config = config or TrainConfig()
        if (run_dir / "config.json").exists():
            raise OutputError(f"{run_dir} already holds a training run; use --resume to continue it or "
                              "choose another output folder.")
        state = {"epoch": 0, "best": None, "wait": 0}
    if config.select not in ("best", "last"):
        raise InputError(f"select must be 'best' or 'last', got {config.select!r}")
    if config.n_classes not in (1, len(CLASS_NAMES)):
        raise InputError(f"--classes must be 1 or {len(CLASS_NAMES)}, got {config.n_classes}")
    SegmentationLoss(config.loss, config.n_classes)  # refuse a bad loss before the slow parts
    return config, val, split_file, state, saved_train


def _prepared_cases(cases_dir: Path, cache: Path, spec: ModelGridSpec, val: Sequence[str],
                    split_file: Optional[os.PathLike], saved_train: Optional[Sequence[str]], log):
    """The patient-wise split and its cases on the model grid (cached): ``(split, train, val)``."""
    cases = find_cases(cases_dir)
    split = make_split(cases, val=val, split_file=split_file)
    if saved_train is not None and sorted(split.train) != sorted(saved_train):
        raise InputError(f"The cases in {cases_dir} differ from those the run was started with.")
    by_id = {c.case_id: c for c in cases}
    t0 = time.monotonic()
    train_cases = [prepare_case(by_id[c], cache, spec) for c in split.train]
    val_cases = [prepare_case(by_id[c], cache, spec) for c in split.val]
    log(f"Prepared {len(train_cases)} training case(s) ({sum(len(c) for c in train_cases)} slices) and "
        f"{len(val_cases)} validation case(s) in {time.monotonic() - t0:.0f} s")
    return split, train_cases, val_cases


def _starting_model(run_dir: Path, config: TrainConfig, state: Dict, resume: bool, init_model, log):
    """The network to train: the last checkpoint (resume), the ``init`` weights, or a new U-Net."""
    import keras

    from ..core.unet import build_unet, position_layer

    if resume:
        position_layer()  # registered before Keras looks the layer up in the file
        keras_model = keras.models.load_model(run_dir / "last.keras", compile=True, safe_mode=True)
        log(f"Resuming {run_dir} after epoch {state['epoch']}")
        return keras_model
    if init_model is not None:
        keras_model = init_model
        log(f"Starting from the weights of {config.init}")
    else:
        keras_model = build_unet(size=config.size, n_classes=config.n_classes,
                                 base_filters=config.base_filters, depth=config.depth,
                                 in_channels=config.spec.channels, position_channel=config.position_channel)
    _compile(keras_model, config)
    return keras_model


def train(cases_dir: os.PathLike, run_dir: os.PathLike, config: Optional[TrainConfig] = None, *,
          val: Sequence[str] = (), split_file: Optional[os.PathLike] = None, resume: bool = False,
          epochs: Optional[int] = None, cache_dir: Optional[os.PathLike] = None, verbose: int = 1,
          log=print) -> TrainResult:
    """Train (or, with ``resume``, continue training) a U-Net; see the module docstring for outputs.

    Args:
        cases_dir: folder of case folders (:func:`LungSegLib.training.dataset.find_cases`).
        run_dir: the run directory; must not hold a run unless ``resume``.
        config: the recipe (default :class:`TrainConfig`); ignored on resume (the saved one is used).
        val, split_file: validation cases, see :func:`LungSegLib.training.dataset.make_split`.
        resume: continue the run in ``run_dir`` from its last epoch.
        epochs: on resume, a new total number of epochs (the learning-rate schedule is kept).
        cache_dir: where the model-grid cases are cached (default ``run_dir/cache``).
        verbose: Keras progress: 0 silent, 1 progress bar, 2 one line per epoch.
    """
    import keras

    run_dir, cases_dir = Path(run_dir), Path(cases_dir)
    config, val, split_file, state, saved_train = _run_setup(run_dir, config, val, split_file, resume, epochs)
    init_model = None
    if config.init and not resume:
        from .finetune import initial_model

        init_model = initial_model(config.init, config)  # sets the grid/architecture of config
    spec = config.spec
    cache = Path(cache_dir) if cache_dir else run_dir / "cache"
    split, train_cases, val_cases = _prepared_cases(cases_dir, cache, spec, val, split_file, saved_train, log)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        _write_json(run_dir / "config.json", {"config": config.to_json(),
                                              "split": {"train": list(split.train), "val": list(split.val)},
                                              "cases_dir": str(cases_dir)})
        (run_dir / "log.csv").unlink(missing_ok=True)  # left by a run that never finished an epoch

    keras.utils.set_random_seed(config.seed + state["epoch"])
    keras_model = _starting_model(run_dir, config, state, resume, init_model, log)
    augment = Augmenter(config.augment_config, config.hu_window) if config.augment else None
    sampler = SliceSampler(train_cases, config.n_classes, seed=config.seed * 1000 + state["epoch"],
                           lung_fraction=config.lung_fraction, augment=augment)
    dataset = tf_dataset(sampler, config.batch_size, spec.size, spec.channels)
    run = _Run(run_dir, config, split, cases_dir, train_cases, val_cases, state)
    run_state = _run_state_callback()(run)
    if state["epoch"] < config.epochs:
        keras_model.fit(dataset, epochs=config.epochs, initial_epoch=state["epoch"],
                        steps_per_epoch=config.steps_per_epoch, callbacks=[run_state], verbose=verbose,
                        shuffle=False)  # the sampler draws at random already
    if not run.best_path.is_file():
        raise OutputError(f"No epoch finished in {run_dir}: nothing to save.")
    fit, unlearned = _check_fit(run, config, log)
    return TrainResult(run_dir, run.best_path, run.best_path.with_suffix(".json"), run_dir / "log.csv",
                       int(state["epoch"]), int(state.get("best_epoch") or 0), float(state["best"]),
                       run.monitor, run_state.stopped_early, run.weights_path, fit, unlearned)


def _check_fit(run: "_Run", config: TrainConfig, log) -> Tuple[Dict[str, float], List[str]]:
    """Score the kept model on its own training slices; record the result in both cards and warn when a
    lung was not learned (the files stay, for inspection, marked as unfit)."""
    from ..core.model import card_path, load_model

    model = load_model(run.best_path).keras_model
    total = sum(validation_counts(model, run.train_cases, config.n_classes, config.batch_size).values())
    names = ("lung",) if config.n_classes == 1 else tuple(lung.key for lung in LUNG_LABELS)
    fit = {name: round(float(d), 4) for name, d in zip(names, dice_from_counts(total[:, 0], total[:, 1], total[:, 2]))}
    unlearned = [name for name, d in fit.items() if d < MIN_FIT_DICE]
    for model_file in (run.best_path, run.weights_path):
        card = json.loads(card_path(model_file).read_text(encoding="utf-8"))
        card["training"]["fit_dice"] = fit
        if unlearned:
            card["training"]["not_learned"] = unlearned
        write_card(model_file, card)
    if unlearned:
        def lung(name: str) -> str:
            return name if name == "lung" else f"{name} lung"

        log(f"WARNING: the kept model did not learn the {' and the '.join(lung(n) for n in unlearned)}"
            " (Dice on its own training slices: " + ", ".join(f"{lung(n)} {d:.2f}" for n, d in fit.items())
            + f"). Do not use it: train again with another --seed or more --epochs. Its files in {run.dir} "
            "are kept for inspection, and its card says so (training.not_learned).")
    return fit, unlearned
