"""CPU time of the post-processing on bench.py's 400-slice phantom (lungs by threshold, split by side):
before issue 11 (no HU-based steps) vs the default without the pleural-lesion step vs the default (airways +
partial-volume rule + pleural lesions + walled gas) vs + the boundary-fat rule.

    python benchmarks/postprocess_time.py
"""
import sys, time
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
import numpy as np
from scipy import ndimage
from bench import synthetic_ct
from LungSegLib.core.postprocess import PostprocessOptions, postprocess, split_by_side
ct, sp = synthetic_ct(400)
spacing = (sp[2], sp[1], sp[0])
body = np.zeros(ct.shape, bool)
for z in range(ct.shape[0]):
    body[z] = ndimage.binary_fill_holes(ct[z] > -500)
labels = split_by_side(body & (ct < -500))
print("lung voxels", int((labels > 0).sum()))
def t(opts, use_ct, n=3):
    best = 1e9
    for _ in range(n):
        work = labels.copy(); t0 = time.process_time()
        postprocess(work, opts, ct=ct if use_ct else None, spacing=spacing)
        best = min(best, time.process_time() - t0)
    return round(best, 3)
off = PostprocessOptions(remove_airways=False, boundary_midpoint=False)
print("before (no HU steps):", t(off, False), "s CPU; default without the pleural step:",
      t(PostprocessOptions(fill_pleural_lesions=False), True), "s CPU; default without the walled-gas step:",
      t(PostprocessOptions(remove_walled_gas=False), True), "s CPU; default with CT:", t(PostprocessOptions(), True),
      "s CPU; + fat rule:", t(PostprocessOptions(remove_boundary_fat=True), True))
