"""The pipeline's defaults and the command-line choices, in one place (standard library only).

What belongs to a *model* (its input grid and HU window) is read from the model's card; the values here
are what a card that does not say falls back to, and what ``lungseg train`` writes into new cards.
"""
from __future__ import annotations

from typing import Tuple

# --- the model grid (a card's "input" section overrides these) ------------------------------------------
#: Pixels per side of the square model grid.
GRID_SIZE = 256
#: Pixel size of the model grid in mm (256 x 1.5 mm = 384 mm field of view).
GRID_PIXEL_MM = 1.5
#: Model input window in HU: air (-1024) to soft tissue/contrast (600). Values outside are clipped, so
#: -3024 padding outside the scan circle looks like air and bone/metal like dense tissue.
HU_WINDOW: Tuple[float, float] = (-1024.0, 600.0)
#: Noise (HU SD on the model grid, :func:`LungSegLib.core.noise.noise_sd_hu`) above which a slice is smoothed
#: before the network sees it, and the level it is smoothed to. The shared CTs read 6–22 HU and training adds
#: up to 30 HU of white noise; the bundled model starts to fail from about 60 HU (white 200 HU or coarse
#: 150 HU noise on the sample). Smoothing to 20 HU measured better than to 15 or 10 (less blur) on the
#: sample with white and coarse noise, for the bundled model (`benchmarks/results/noise_scan_target*.md`) and a
#: leave-one-out fold (`benchmarks/noise_robustness.py --scan --model M --target HU`).
NOISE_TRIGGER_HU = 35.0
NOISE_TARGET_HU = 20.0
#: A pixel denser than this (HU) is body; a slice with none is background without running the network.
BODY_HU = -500.0

# --- run-time defaults ------------------------------------------------------------------------------------
#: Slices per network call for the CLI and the Python API (memory grows ~3 MB per slice).
BATCH_SIZE = 8
#: Slices per network call in 3D Slicer's worker (smaller: Slicer itself holds the scene in memory).
WORKER_BATCH_SIZE = 4
#: Slices per training step (``lungseg train``).
TRAIN_BATCH_SIZE = 8
#: The largest batch the CLI accepts (memory: about 3 MB per slice, and a short last batch allocates
#: only what it holds).
MAX_BATCH_SIZE = 64

# --- choices the CLI, the worker and the panel offer ------------------------------------------------------
#: Output formats, longest extension first (``.seg.nrrd`` before ``.nrrd``). ``dcm`` is a DICOM
#: Segmentation (needs a DICOM series input and the optional highdicom package).
FORMATS: Tuple[str, ...] = ("seg.nrrd", "nrrd", "nii.gz", "nii", "mha", "dcm")
#: Arithmetic of the network's hidden layers.
PRECISIONS: Tuple[str, ...] = ("float32", "bfloat16", "auto")
#: The default: bfloat16 hidden layers where the CPU multiplies bfloat16 natively (AVX512_BF16 / AMX: about
#: 40 % less network time, labels equal to float32's in 99.998 % of voxels and the same Dice to three
#: decimals on the shared cases, ``benchmarks/results/bench_400_stop14.md``), float32 elsewhere.
DEFAULT_PRECISION = "auto"
#: The network runs on axial slices at most this far apart (mm) and the thinner slices between them are
#: interpolated (their lung probabilities, linearly, on the model grid): a 0.6-1.25 mm CT runs a half to a
#: third of its slices. On the shared cases resliced to 0.8-1 mm it changed Dice by at most 0.0005; even
#: interpolating across 6-8.5 mm of real anatomy (every 2nd slice of the 3-4.25 mm originals) lowered it by
#: 0.001-0.007 (`benchmarks/results/slice_step.md`).
#: Slices thicker than half the step (1.25 mm) are all run. 0 runs every slice.
SLICE_STEP_MM = 2.5
#: The largest step accepted (mm): beyond it the interpolation would cross anatomy.
MAX_SLICE_STEP_MM = 3.0
#: ``lungseg train --loss``: cross-entropy + Dice (the default, first), cross-entropy, Dice, binary CE
#: (one-class models); :class:`LungSegLib.training.losses.SegmentationLoss` implements each.
LOSSES: Tuple[str, ...] = ("ce_dice", "ce", "dice", "bce")
#: Where the worker runs the network.
DEVICES: Tuple[str, ...] = ("auto", "cpu", "gpu")
