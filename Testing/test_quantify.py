"""Lung density measures on phantoms whose answers can be worked out by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from LungSegLib.core.geometry import Geometry
from LungSegLib.core.quantify import DensityThresholds, measure_lungs

# 2 x 2 x 2.5 mm voxels: 10 mm^3 = 0.01 mL each
GEOMETRY = Geometry((2.0, 2.0, 2.5))

#: right lung: (HU, voxels); 1000 voxels = 10 mL
RIGHT = [(-1100, 50), (-1000, 100), (-950, 50), (-930, 200), (-800, 300), (-600, 100), (-250, 50),
         (-100, 100), (50, 50)]
#: left lung: 500 voxels = 5 mL
LEFT = [(-960, 100), (-900, 300), (-700, 100)]


def _phantom(dtype=np.int16):
    """A 10 x 20 x 20 volume whose first voxels (in C order) hold the listed lung voxels."""
    shape = (10, 20, 20)
    ct = np.full(shape, 40, dtype=dtype).ravel()  # soft tissue outside the lungs
    labels = np.zeros(shape, np.uint8).ravel()
    pos = 0
    for label, spec in ((1, RIGHT), (2, LEFT)):
        for hu, n in spec:
            ct[pos:pos + n] = hu
            labels[pos:pos + n] = label
            pos += n
    # shuffle the voxels: the measures must not depend on where they lie
    order = np.random.default_rng(0).permutation(ct.size)
    return ct[order].reshape(shape), labels[order].reshape(shape)


def test_volumes_and_hand_computed_fractions():
    ct, labels = _phantom()
    m = measure_lungs(ct, labels, GEOMETRY)
    r, l, both = m["right"], m["left"], m["both"]
    assert (r.voxels, l.voxels, both.voxels) == (1000, 500, 1500)
    assert r.volume_ml == pytest.approx(10.0) and l.volume_ml == pytest.approx(5.0)
    assert both.volume_ml == pytest.approx(15.0)
    # %LAA-950 counts strictly below -950: -1100 and -1000 (150 of 1000); -950 itself does not count
    assert r.laa_low_pct == pytest.approx(15.0)
    # below -910: + the 50 at -950 and 200 at -930 = 400
    assert r.laa_high_pct == pytest.approx(40.0)
    # %HAA -600..-250, both ends inclusive: 100 at -600 + 50 at -250
    assert r.haa_pct == pytest.approx(15.0)
    # LCTA bins, lo <= h < hi: emphysema [-1050,-950): -1000 -> 100; inflated [-950,-750): -950, -930,
    # -800 -> 550; infiltrated [-750,-400): -600 -> 100; collapsed [-400,0): -250, -100 -> 150;
    # -1100 and +50 lie in no bin
    assert r.bins_pct == pytest.approx({"emphysema": 10.0, "inflated": 55.0, "infiltrated": 10.0,
                                        "collapsed": 15.0})
    assert r.bins_ml == pytest.approx({"emphysema": 1.0, "inflated": 5.5, "infiltrated": 1.0,
                                       "collapsed": 1.5})
    # left: 100 of 500 below -950, 400 below -910, none in HAA
    assert (l.laa_low_pct, l.laa_high_pct, l.haa_pct) == pytest.approx((20.0, 20.0, 0.0))
    # -960 is emphysema, -900 inflated, -700 infiltrated
    assert l.bins_pct == pytest.approx({"emphysema": 20.0, "inflated": 60.0, "infiltrated": 20.0,
                                        "collapsed": 0.0})
    # both: (150 + 100) / 1500 below -950
    assert both.laa_low_pct == pytest.approx(100 * 250 / 1500)


def test_hu_statistics_match_numpy_exactly():
    ct, labels = _phantom()
    m = measure_lungs(ct, labels, GEOMETRY)
    for region, sel in (("right", labels == 1), ("left", labels == 2), ("both", labels > 0)):
        values = ct[sel].astype(float)
        got = m[region]
        assert got.mean_hu == pytest.approx(values.mean(), abs=1e-9)
        assert got.sd_hu == pytest.approx(values.std(), abs=1e-9)
        assert got.median_hu == pytest.approx(np.percentile(values, 50), abs=1e-9)
        assert got.perc_hu == pytest.approx(np.percentile(values, 15), abs=1e-9)
    # by hand: the left lung's 15th percentile is -960 (100 of 500 voxels = 20 % lie there);
    # its median is -900
    assert m["left"].perc_hu == -960 and m["left"].median_hu == -900
    # right: ranks 0..49 -1100, 50..149 -1000, so position 0.15 * 999 = 149.85 lies between -1000 and -950
    assert m["right"].perc_hu == pytest.approx(-1000 + 0.85 * 50)


def test_float_input_and_other_thresholds():
    ct, labels = _phantom()
    noisy = ct.astype(np.float32) + 0.3  # rounds back to the same whole HU
    m = measure_lungs(noisy, labels, GEOMETRY,
                      DensityThresholds(laa_low=-960, haa=(-700, -600), percentile=50,
                                        bins=(("air", -2000, -900), ("rest", -900, 100))))
    left = m["left"]
    assert left.mean_hu == pytest.approx(ct[labels == 2].mean() + 0.3, abs=1e-4)
    assert left.laa_low_pct == 0.0  # -960 is not below -960
    assert left.haa_pct == pytest.approx(20.0)  # -700 (inclusive low end)
    assert left.perc_hu == left.median_hu == -900
    assert left.bins_pct == pytest.approx({"air": 20.0, "rest": 80.0})
    assert [c for c, _ in m.columns()][-2:] == ["bin_air_pct", "bin_rest_pct"]


def test_empty_lung_gives_nan_not_error_and_json_none():
    ct, labels = _phantom()
    labels[labels == 2] = 0
    m = measure_lungs(ct, labels, GEOMETRY)
    assert m["left"].voxels == 0 and m["left"].volume_ml == 0.0
    assert math.isnan(m["left"].mean_hu) and math.isnan(m["left"].perc_hu)
    d = m.to_dict()
    left = [r for r in d["regions"] if r["region"] == "left"][0]
    assert left["mean_hu"] is None and left["voxels"] == 0
    assert m["both"].voxels == 1000


def test_rows_and_bad_thresholds():
    ct, labels = _phantom()
    rows = measure_lungs(ct, labels, GEOMETRY).rows()
    assert [r["region"] for r in rows] == ["right", "left", "both"]
    assert rows[0]["bin_inflated_pct"] == pytest.approx(55.0)
    assert rows[0]["name"] == "Right lung"
    with pytest.raises(ValueError, match="low < high"):
        DensityThresholds(bins=(("x", 0.0, -10.0),))
    with pytest.raises(ValueError, match="same shape"):
        measure_lungs(ct, labels[:-1], GEOMETRY)
