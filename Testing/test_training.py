"""Training pipeline: case discovery, patient-wise splits, caching, losses, train/resume, checkpoint + card.

Tiny models (base_filters=4, depth=2) on a 64 px model grid of 6 mm, a few steps each.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LungSegLib.training.dataset import (SliceSampler, find_cases, make_split, model_labels, prepare_case,
                                suspect_slices)
from LungSegLib.errors import InputError, OutputError
from LungSegLib.core.preprocess import ModelGridSpec
from LungSegLib.training.train import TrainConfig, train

from conftest import DATA_DIR, SAMPLE_CASE

SPEC = ModelGridSpec(size=64, pixel_mm=6.0)
SHAPE = (20, 96, 96)  # k, j, i
SPACING = (4.0, 4.0, 8.0)  # i, j, k mm


def tiny_config(**kw) -> TrainConfig:
    base = dict(base_filters=4, depth=2, size=SPEC.size, pixel_mm=SPEC.pixel_mm, epochs=2, steps_per_epoch=3,
                batch_size=4, patience=0, augment=False, learning_rate=3e-3)
    base.update(kw)
    return TrainConfig(**base)


def write_case(folder: Path, phantom, names=("ct.nrrd", "label.nrrd"), binary=False, info=None,
               direction=None, shift=(0.0, 0.0, 0.0)) -> Path:
    """A phantom case folder (CT + labels on one grid, optional info.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    geometry = phantom.geometry(SHAPE, SPACING, direction=direction, shift_mm=shift)
    labels = phantom.labels(geometry, SHAPE)
    if binary:
        labels = (labels > 0).astype(np.uint8) * 7  # one "lung" value
    for array, name in ((phantom.ct(geometry, SHAPE), names[0]), (labels, names[1])):
        image = sitk.GetImageFromArray(array)
        geometry.apply_to_sitk(image)
        sitk.WriteImage(image, str(folder / name), useCompression=True)
    if info is not None:
        (folder / "info.json").write_text(json.dumps(info))
    return folder


@pytest.fixture(scope="module")
def phantom_cases(tmp_path_factory, chest_phantom) -> Path:
    """Three phantom patients in different file conventions."""
    root = tmp_path_factory.mktemp("cases")
    write_case(root / "p1", chest_phantom, info={"patient_id": "P1"})
    flip_x = np.diag([-1.0, 1.0, 1.0])  # stored right-left mirrored: labels must follow the patient
    write_case(root / "p2", chest_phantom, ("image.nii.gz", "label.nii.gz"), binary=True, direction=flip_x,
               shift=(10.0, -6.0, 0.0))
    write_case(root / "p3", chest_phantom, ("ct.nii.gz", "label.nii.gz"), shift=(-8.0, 5.0, 8.0),
               info={"patient_id": "P3", "suspect_slices_label_z": [[2, 10]]})
    (root / "notes").mkdir()  # a folder without a case is ignored
    return root


@pytest.fixture(scope="module")
def real_case_dir(tmp_path_factory) -> Path:
    """16 lung slices of the shared sample case at a quarter of its in-plane resolution (skips without data)."""
    source = DATA_DIR / "cases" / SAMPLE_CASE
    if not (source / "ct.nrrd").is_file():
        pytest.skip(f"real data not available at {source} (set LUNGSEG_DATA_DIR)")
    ct = sitk.ReadImage(str(source / "ct.nrrd"))
    label = sitk.ReadImage(str(source / "label.nrrd"))
    rows = np.flatnonzero(sitk.GetArrayViewFromImage(label).any(axis=(1, 2)))
    start = int(rows[len(rows) // 2] - 8)
    folder = tmp_path_factory.mktemp("real_cases") / SAMPLE_CASE
    folder.mkdir()
    sitk.WriteImage(ct[::4, ::4, start:start + 16], str(folder / "ct.nrrd"), useCompression=True)
    sitk.WriteImage(label[::4, ::4, start:start + 16], str(folder / "label.nrrd"), useCompression=True)
    return folder.parent


def test_find_cases_accepts_nrrd_and_nifti_names(phantom_cases):
    cases = find_cases(phantom_cases)
    assert [c.case_id for c in cases] == ["p1", "p2", "p3"]
    assert cases[1].image.name == "image.nii.gz" and cases[2].image.name == "ct.nii.gz"
    assert [c.patient_id for c in cases] == ["P1", "p2", "P3"]  # info.json, else the folder name


def test_find_cases_refuses_a_folder_without_cases(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="No cases"):
        find_cases(tmp_path)


def test_cases_are_prepared_like_inference_with_sides_by_patient_position(phantom_cases, tmp_path):
    cases = {c.case_id: prepare_case(c, tmp_path, SPEC) for c in find_cases(phantom_cases)}
    for case in cases.values():
        assert case.image.dtype == np.float16 and case.image.shape[1:] == (64, 64, 1)
        assert 0.0 <= float(case.image.min()) and float(case.image.max()) <= 1.0
        lungs = np.asarray(case.labels)
        assert set(np.unique(lungs)) == {0, 1, 2}
        cols = np.nonzero(lungs)[2]
        # right lung (1) at the canonical slice's smaller columns (patient right), whatever the file:
        assert cols[lungs[np.nonzero(lungs)] == 1].mean() < cols[lungs[np.nonzero(lungs)] == 2].mean()
        # lung pixels are dark on the model input
        assert float(np.asarray(case.image)[lungs > 0].mean()) < 0.15
    # the binary, mirrored case was split into right/left as the 0/1/2 case is labelled
    n1 = (np.asarray(cases["p1"].labels) == 1).sum() / (np.asarray(cases["p1"].labels) > 0).sum()
    n2 = (np.asarray(cases["p2"].labels) == 1).sum() / (np.asarray(cases["p2"].labels) > 0).sum()
    assert abs(n1 - n2) < 0.05
    # p3's suspect slice k=10 is left out
    assert len(cases["p3"]) == SHAPE[0] - 1 and 10 not in set(cases["p3"].slices.tolist())
    assert len(cases["p1"]) == SHAPE[0]
    # a second call reads the cache back as memory maps
    again = prepare_case(find_cases(phantom_cases)[0], tmp_path, SPEC)
    assert isinstance(again.image, np.memmap)
    np.testing.assert_array_equal(np.asarray(again.labels), np.asarray(cases["p1"].labels))


def test_suspect_slices_accepts_pairs_and_indices():
    mask = suspect_slices({"suspect_slices_label_z": [[2, 3], 5, [1, 99]]}, 8)
    assert np.flatnonzero(mask).tolist() == [3, 5]
    assert not suspect_slices({}, 4).any()


def test_labels_other_than_lung_values_are_refused(tmp_path, chest_phantom):
    folder = write_case(tmp_path / "cases" / "bad", chest_phantom)
    label = sitk.ReadImage(str(folder / "label.nrrd"))
    array = sitk.GetArrayFromImage(label)
    array[0, 0, :3] = (3, 3, 3)
    bad = sitk.GetImageFromArray(array)
    bad.CopyInformation(label)
    sitk.WriteImage(bad, str(folder / "label.nrrd"))
    with pytest.raises(InputError, match="labels must be"):
        prepare_case(find_cases(tmp_path / "cases")[0], tmp_path / "cache", SPEC)


def test_split_never_puts_one_patient_in_train_and_val(tmp_path, chest_phantom):
    root = tmp_path / "cases"
    for name, patient in (("a1", "A"), ("a2", "A"), ("b1", "B"), ("c1", "C")):
        (root / name).mkdir(parents=True)
        for f in ("ct.nrrd", "label.nrrd"):
            (root / name / f).write_bytes(b"x")
        (root / name / "info.json").write_text(json.dumps({"patient_id": patient}))
    cases = find_cases(root)
    with pytest.raises(InputError, match="both training and validation"):
        make_split(cases, val=["a1"])  # a2 is the same patient
    split = make_split(cases, val=["a1", "a2"])
    assert split == make_split(cases, split_file=_split_file(tmp_path, ["b1", "c1"], ["a1", "a2"]))
    assert set(split.train) == {"b1", "c1"} and not set(split.train) & set(split.val)
    with pytest.raises(InputError, match="both training and validation"):
        make_split(cases, split_file=_split_file(tmp_path, ["a1", "b1"], ["a2"]))
    with pytest.raises(InputError, match="Unknown val"):
        make_split(cases, val=["zz"])
    with pytest.raises(InputError, match="No training cases"):
        make_split(cases, val=["a1", "a2", "b1", "c1"])
    assert make_split(cases).val == ()


def _split_file(tmp_path, train_ids, val_ids) -> Path:
    path = tmp_path / f"split_{'_'.join(val_ids)}.json"
    path.write_text(json.dumps({"train": train_ids, "val": val_ids}))
    return path


def test_sampler_draws_only_training_cases_with_model_targets(phantom_cases, tmp_path):
    cases = find_cases(phantom_cases)
    split = make_split(cases, val=["p2"])
    by_id = {c.case_id: c for c in cases}
    train_cases = [prepare_case(by_id[c], tmp_path, SPEC) for c in split.train]
    sampler = SliceSampler(train_cases, n_classes=3, seed=0, lung_fraction=1.0)
    pool = {(train_cases[c].case_id, i) for c, i in sampler._all}
    assert {case for case, _ in pool} == {"p1", "p3"}
    x, y = sampler.draw()
    assert x.shape == (64, 64, 1) and x.dtype == np.float32 and y.dtype == np.uint8 and y.any()
    binary = SliceSampler(train_cases, n_classes=1, seed=0, lung_fraction=1.0)
    assert set(np.unique(binary.draw()[1])) == {0, 1}
    np.testing.assert_array_equal(model_labels(np.array([0, 1, 2]), 1), [0, 1, 1])


def test_losses_score_a_perfect_prediction_best():
    import keras

    from LungSegLib.training.losses import SegmentationLoss

    y = np.zeros((2, 8, 8), np.uint8)
    y[:, 2:5, 1:3] = 1
    y[:, 2:6, 5:7] = 2
    perfect = np.eye(3, dtype=np.float32)[y] * 0.98 + 0.01
    uniform = np.full((2, 8, 8, 3), 1 / 3, np.float32)
    for kind in ("ce", "dice", "ce_dice"):
        loss = SegmentationLoss(kind, 3)
        assert float(loss(y, perfect)) < 0.1 < float(loss(y, uniform))
    binary = SegmentationLoss("bce", 1)
    lung = (y > 0).astype(np.float32)[..., None]
    assert float(binary(y > 0, lung * 0.98 + 0.01)) < float(binary(y > 0, np.full_like(lung, 0.5)))
    clone = SegmentationLoss.from_config(SegmentationLoss("dice", 1).get_config())
    assert (clone.kind, clone.n_classes) == ("dice", 1)
    assert keras.saving.get_registered_object("lungseg>SegmentationLoss") is SegmentationLoss
    with pytest.raises(ValueError, match="binary"):
        SegmentationLoss("bce", 3)


def _log_rows(run_dir: Path):
    with open(run_dir / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_loss_goes_down_on_real_slices(real_case_dir, tmp_path):
    run = tmp_path / "run"
    result = train(real_case_dir, run, tiny_config(epochs=3, steps_per_epoch=6), verbose=0, log=lambda *_: None)
    rows = _log_rows(run)
    losses = [float(r["loss"]) for r in rows]
    assert len(losses) == 3
    assert not any(key.startswith("val_") for key in rows[0])  # no validation, no empty columns
    assert losses[-1] < losses[0]
    assert result.monitor == "loss" and result.best_model.is_file()


def test_train_validate_resume_and_load_the_checkpoint(phantom_cases, tmp_path):
    from LungSegLib.core.model import load_model

    run = tmp_path / "run"
    config = tiny_config(epochs=1, augment=True)
    first = train(phantom_cases, run, config, val=["p2"], verbose=0, log=lambda *_: None)
    assert first.monitor == "val_dice" and first.epochs_run == 1
    row = _log_rows(run)[0]
    assert 0.0 <= float(row["val_dice_right"]) <= 1.0 and "val_dice_left" in row
    with pytest.raises(OutputError, match="--resume"):
        train(phantom_cases, run, config, verbose=0, log=lambda *_: None)

    second = train(phantom_cases, run, resume=True, epochs=3, verbose=0, log=lambda *_: None)
    assert second.epochs_run == 3
    assert [int(r["epoch"]) for r in _log_rows(run)] == [0, 1, 2]
    state = json.loads((run / "state.json").read_text())
    assert state["epoch"] == 3 and 1 <= state["best_epoch"] <= 3

    loaded = load_model(second.best_model)  # safe mode + checksum from the card
    card = loaded.card
    assert loaded.classes == ("background", "right lung", "left lung")
    assert loaded.spec == SPEC and card["architecture"]["base_filters"] == 4
    assert card["data"]["train_cases"] == ["p1", "p3"] and card["data"]["val_cases"] == ["p2"]
    assert "p2" not in card["data"]["train_patients"]
    assert card["training"]["best_logs"]["val_dice"] == pytest.approx(state["best"])
    import tensorflow as tf  # what a rerun must match to be comparable (float rounding steers training)
    env = card["training"]["environment"]
    assert env["tensorflow"] == tf.__version__ and env["numpy"] == np.__version__ and env["python"].count(".") == 2
    out = loaded.keras_model.predict_on_batch(np.zeros((1, 64, 64, 1), np.float32))
    assert out.shape == (1, 64, 64, 3)
    # the same best epoch exported as named arrays, rebuilt in code from the card: bit-identical weights
    exported = load_model(second.best_weights)
    assert second.best_weights.name == "best.weights.npz" and exported.card["exported_from"]["file"] == "best.keras"
    assert exported.card["exported_from"]["sha256"] == loaded.card["sha256"]  # the checkpoint it came from
    assert exported.card["architecture"]["size"] == 64 and exported.card["training"] == card["training"]
    assert all(np.array_equal(a, b) for a, b in zip(loaded.keras_model.get_weights(),
                                                    exported.keras_model.get_weights()))


def test_binary_model_trains_and_loads(phantom_cases, tmp_path):
    from LungSegLib.core.model import load_model

    result = train(phantom_cases, tmp_path / "bin",
                   tiny_config(n_classes=1, loss="bce", epochs=2, steps_per_epoch=2, select="last"),
                   val=["p3"], verbose=0, log=lambda *_: None)
    loaded = load_model(result.best_model)
    assert loaded.n_classes == 1 and loaded.classes == ("background", "lung")
    assert "val_dice_lung" in _log_rows(tmp_path / "bin")[0]
    assert result.best_epoch == 2 and loaded.card["training"]["selected_by"] == "last epoch"


def test_resume_needs_a_run(phantom_cases, tmp_path):
    with pytest.raises(InputError, match="no run to resume"):
        train(phantom_cases, tmp_path / "none", resume=True, verbose=0)


def test_cli_train_reports_bad_cases_with_exit_code(phantom_cases, tmp_path, capsys):
    from LungSegLib.cli import main

    code = main(["train", str(phantom_cases), "--out", str(tmp_path / "r"), "--val", "nope", "--quiet"])
    assert code == 3
    assert "Unknown val case" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing"), "--out", str(tmp_path / "r2")]) == 3


def test_cli_train_writes_a_loadable_model(phantom_cases, tmp_path, capsys):
    from LungSegLib.cli import main
    from LungSegLib.core.model import load_model

    run = tmp_path / "cli"
    code = main(["train", str(phantom_cases), "--out", str(run), "--val", "p3", "--base-filters", "4",
                 "--depth", "2", "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2", "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "Best epoch 1" in out and "best.weights.npz" in out
    assert load_model(run / "best.keras").spec.size == 256
    assert load_model(run / "best.weights.npz").card["architecture"]["depth"] == 2
    assert load_model(run / "best.keras").card["training"]["augmentation"]["p_bronchogram"] == 0.0  # bundled recipe


def test_cli_train_extended_augmentation_is_recorded_in_the_card(phantom_cases, tmp_path):
    from LungSegLib.cli import main
    from LungSegLib.training.augment import EXTENDED

    run = tmp_path / "ext"
    assert main(["train", str(phantom_cases), "--out", str(run), "--val", "p3", "--base-filters", "4",
                 "--depth", "2", "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2", "--quiet",
                 "--augmentation", "extended"]) == 0
    augmentation = json.loads((run / "best.json").read_text())["training"]["augmentation"]
    assert augmentation["p_bronchogram"] == EXTENDED.p_bronchogram > 0 and augmentation["gas_below_bases"] is True


def test_context_model_trains_loads_and_segments(phantom_cases, tmp_path, chest_phantom, capsys):
    """--context-mm: a 3-channel network (the CT below, the slice, the CT above) from training to
    inference; its card says so, and a card that does not fit the network is refused."""
    from LungSegLib.cli import main
    from LungSegLib.core.inference import segment_array
    from LungSegLib.core.model import load_model
    from LungSegLib.errors import ModelError

    run = tmp_path / "ctx"
    assert main(["train", str(phantom_cases), "--out", str(run), "--val", "p3", "--base-filters", "4",
                 "--depth", "2", "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2", "--quiet",
                 "--context-mm", "6"]) == 0
    for name in ("best.keras", "best.weights.npz"):
        loaded = load_model(run / name)
        assert loaded.spec.context_mm == 6.0 and loaded.spec.channels == 3
        assert loaded.card["architecture"]["in_channels"] == 3
        assert loaded.keras_model.input_shape[-1] == 3
    shape, spacing = (12, 60, 60), (5.0, 6.0, 6.0)
    geometry = chest_phantom.geometry(shape, spacing)
    result = segment_array(chest_phantom.ct(geometry, shape), geometry, loaded, postprocess_options=None)
    assert result.labels.shape == shape and set(np.unique(result.labels)) <= {0, 1, 2}
    # a card whose input section does not fit the network (no context for a 3-channel one) is refused
    card_file = run / "best.weights.json"
    card = json.loads(card_file.read_text())
    card["input"]["context_mm"] = 0.0
    card_file.write_text(json.dumps(card))
    with pytest.raises(ModelError, match="input channel"):
        load_model(run / "best.weights.npz")
    assert main(["train", str(phantom_cases), "--out", str(tmp_path / "neg"), "--context-mm", "-2"]) == 3
    assert "--context-mm" in capsys.readouterr().err


def test_a_model_that_did_not_learn_a_lung_is_flagged(phantom_cases, tmp_path):
    """Two steps teach a network nothing: the run says so, and both cards carry the verdict."""
    from LungSegLib.core.model import load_model

    said = []
    result = train(phantom_cases, tmp_path / "r", tiny_config(epochs=1, steps_per_epoch=1), verbose=0,
                   log=said.append)
    assert result.unlearned and set(result.fit_dice) == {"right", "left"}
    assert all(result.fit_dice[name] < 0.5 for name in result.unlearned)
    assert any(line.startswith("WARNING: the kept model did not learn the") and "--seed" in line for line in said)
    for path in (result.best_model, result.best_weights):
        training = load_model(path).card["training"]  # still loads: the checksum covers the weights, not the card
        assert training["not_learned"] == result.unlearned and training["fit_dice"] == result.fit_dice
    # and every segmentation with it says so
    from LungSegLib.core.inference import segment_array
    from conftest import ChestPhantom

    phantom = ChestPhantom()
    shape, spacing = (12, 60, 60), (5.0, 6.0, 6.0)
    geometry = phantom.geometry(shape, spacing)
    out = segment_array(phantom.ct(geometry, shape), geometry, load_model(result.best_weights))
    assert any(w.code == "model_not_learned" and "did not learn" in str(w) for w in out.warnings)


def test_a_model_that_learned_both_lungs_is_not_flagged(phantom_cases, tmp_path, monkeypatch):
    from LungSegLib.training import train as train_module

    def perfect(model, cases, n_classes, batch_size=8):  # every lung voxel right
        return {c.case_id: np.array([[100, 100, 100], [80, 80, 80]], dtype=np.int64) for c in cases}

    monkeypatch.setattr(train_module, "validation_counts", perfect)
    said = []
    result = train(phantom_cases, tmp_path / "r", tiny_config(epochs=1, steps_per_epoch=1), verbose=0,
                   log=said.append)
    assert result.unlearned == [] and result.fit_dice == {"right": 1.0, "left": 1.0}
    assert not any("WARNING" in line for line in said)
    card = json.loads(result.card.read_text())
    assert card["training"]["fit_dice"] == {"right": 1.0, "left": 1.0} and "not_learned" not in card["training"]
