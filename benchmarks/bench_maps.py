"""Accuracy and cost of the demo's S1 -> fsaverage5 surface fit (bt_utils.demo.surface).

Prints one markdown table: where S1's auditory cortex voxels land on fsaverage5
(superior temporal region of the pial surface: |x| > 35, -50 < y < 10, z < 20 mm),
the centroids of a few ROIs on fsaverage5's pial surface, how often a
voxel's S1 curvature has the sign of its fsaverage5 vertex's curvature, the share of
fsaverage5 vertices a map reaches with the default 4 mm radius, and the time of the
fit (computed afresh in a temporary cache) and of one mapping.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_maps.py``.
"""

from __future__ import annotations

import os
import tempfile
import time

os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
from scipy.spatial import cKDTree  # noqa: E402

from bt_utils.data.layout import VoxelLayout  # noqa: E402
from bt_utils.demo import surface  # noqa: E402
from bt_utils.demo.template import sample_layout, template_roi_table, voxel_coordinates  # noqa: E402
from bt_utils.viz import fsaverage  # noqa: E402
from bt_utils.viz.volumes import import_cortex  # noqa: E402

CENTROID_ROIS = ("AC", "V1", "Broca", "M1M", "IPS", "FEF")
"""ROIs whose centroids on fsaverage5 are printed, per hemisphere."""


def main() -> None:
    from nilearn import datasets

    rows = []
    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        table = surface.template_to_fsaverage("thin", cache_dir=cache)
        rows.append(("fit of the thin mask (cold cache)", f"{time.perf_counter() - started:.1f} s"))
        rois = template_roi_table()
        meshes = datasets.load_fsaverage("fsaverage5")
        pial = np.vstack([meshes["pial"].parts[h].coordinates for h in ("left", "right")])
        x, y, z = pial[table["vertex"]].T
        temporal = (np.abs(x) > 35) & (y > -50) & (y < 10) & (z < 20)
        auditory = (rois["roi"] == "AC").to_numpy()
        rows.append(("AC voxels on the superior temporal region", f"{temporal[auditory].mean():.0%}"))
        rows.append(("other voxels on the superior temporal region", f"{temporal[~auditory].mean():.0%}"))
        for roi in CENTROID_ROIS:
            for hemi in ("L", "R"):
                members = ((rois["roi"] == roi) & (rois["hemisphere"] == hemi)).to_numpy()
                centroid = pial[table["vertex"].to_numpy()[members]].mean(axis=0)
                rows.append((f"{roi} {hemi} centroid (MNI305 mm)", str(tuple(int(c) for c in np.round(centroid)))))

        cortex = import_cortex()
        s1_curvature = np.asarray(cortex.db.get_surfinfo("S1", "curvature").data)  # left then right
        fiducial = np.vstack([pts for pts, _ in cortex.db.get_surf("S1", "fiducial")])
        mask_layout = VoxelLayout("S1", "fullhead", rois.attrs["volume_shape"], rois["volume_index"].to_numpy(),
                                  rois["roi"].to_numpy(), rois["hemisphere"].to_numpy(), "thin")
        s1_vertex = cKDTree(fiducial).query(voxel_coordinates(mask_layout))[1]
        curvature = datasets.load_fsaverage_data("fsaverage5", data_type="curvature")
        fs_curvature = np.concatenate([np.asarray(curvature.data.parts[h]) for h in ("left", "right")])
        # pycortex's mean curvature has the opposite sign of FreeSurfer's curv (on fsaverage5's white
        # surface the two correlate at -0.9), hence the minus
        same = np.sign(-s1_curvature[s1_vertex]) == np.sign(fs_curvature[table["vertex"].to_numpy()])
        rows.append(("curvature sign agrees (S1 voxel vs its fsaverage5 vertex; chance 50%)", f"{same.mean():.0%}"))

        for name, layout in (("thin mask (37,226 voxels)", mask_layout),
                             ("3,000-voxel demo layout (seed 0)", sample_layout(3000, np.random.default_rng(0)))):
            started = time.perf_counter()
            mapping = fsaverage.fsaverage_mapping(layout, cache_dir=cache)
            seconds = time.perf_counter() - started
            reached = np.isfinite(fsaverage.to_fsaverage(np.ones(layout.n_voxels), mapping)).mean()
            rows.append((f"vertices reached, {name}", f"{reached:.0%} (mapping in {seconds:.2f} s)"))

    print("| measure | value |\n|---|---|")
    for measure, value in rows:
        print(f"| {measure} | {value} |")


if __name__ == "__main__":
    main()
