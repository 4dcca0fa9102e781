"""run_calibration_study end to end: tiny segmenters in real Lightning validate runs, cached statistics reused."""

from __future__ import annotations

import json

import torch

from synthrel_lightning.correlation.zoo import ZooEntry
from synthrel_lightning.data import DemoDataModule
from synthrel_lightning.study.calibration_stats import load_stats
from synthrel_lightning.study.calibration_study import DomainPair, run_calibration_study


class DemoThreeSets(DemoDataModule):
    """Demo scenes as three named sets: "demo" (val), "demo_train" and "demo_copy" (the val frames again)."""

    def build_sets(self) -> None:
        super().build_sets()
        self.val_sets = {**self.val_sets, "demo_train": self.train_set, "demo_copy": self.val_sets["demo"]}


def test_run_calibration_study_with_tiny_models(tmp_path) -> None:
    seg = {"class_path": "synthrel_lightning.models.TinySegmenter", "init_args": {"num_classes": 19, "width": 8}}
    spec = {"class_path": "synthrel_lightning.models.OODSegmenter", "init_args": {"segmenter": seg}}
    torch.manual_seed(0)
    zoo = [
        ZooEntry("tiny_msp", model={**spec, "init_args": {**spec["init_args"], "ood_score": "msp"}}),
        ZooEntry("tiny_energy", model={**spec, "init_args": {**spec["init_args"], "ood_score": "energy"}}),
        ZooEntry("broken", checkpoint=str(tmp_path / "missing.ckpt"), model=spec),
    ]
    data = DemoThreeSets(
        root=str(tmp_path / "demo"),
        num_train=2,
        num_val=2,
        image_size=[64, 128],
        crop_size=[64, 128],
        eval_batch_size=2,
        num_workers=0,
    )
    pairs = [DomainPair("demo_copy", "demo")]
    kwargs = {"trainer": {"accelerator": "cpu"}, "pixels_per_image": 500, "bootstrap": 200, "grid": (0.5, 3.0, 0.05)}
    out = tmp_path / "out"
    result = run_calibration_study(zoo, pairs, "demo_train", data, out, **kwargs)
    assert set(result.failed) == {"broken"} and "missing.ckpt" in result.failed["broken"]
    # tiny_energy shares tiny_msp's segmenter: counted once
    assert {r.model for r in result.rows} == {"tiny_msp"} and len(result.rows) == 2
    for r in result.rows:
        # the synthetic set is the real set itself here: its T is the oracle's
        assert r.t_syn == r.t_oracle and r.ece_syn == r.ece_oracle
        assert r.real_frames == 2 and r.real_pixels == 1000
    stats = load_stats(out / "stats" / "tiny_msp.npz")
    assert set(stats) == {"demo", "demo_train", "demo_copy"}
    assert json.loads((out / "calibration_study.json").read_text())["failed"].keys() == {"broken"}
    # a rerun reads the cached statistics instead of evaluating again
    (out / "stats" / "tiny_msp.npz").touch()
    before = (out / "stats" / "tiny_msp.npz").stat().st_mtime_ns
    again = run_calibration_study(zoo[:1], pairs, "demo_train", None, out, **kwargs)
    assert [r.to_dict() for r in again.rows] == [r.to_dict() for r in result.rows]
    assert (out / "stats" / "tiny_msp.npz").stat().st_mtime_ns == before
