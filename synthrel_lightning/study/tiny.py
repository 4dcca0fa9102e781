"""A tiny study: random-weight demo segmenters on a few procedural frames, every stage in seconds on a CPU.

:func:`tiny_study` returns the keyword arguments of
:func:`~synthrel_lightning.study.run.run_paper_study` for such a study (smoke checks of a
set-up, and the package's tests); :func:`write_tiny_zoo` writes its zoo's checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["tiny_model_spec", "tiny_study", "write_tiny_zoo"]


def tiny_model_spec(width: int = 8) -> dict[str, Any]:
    """The ``model`` definition of a tiny demo segmenter (an OODSegmenter over a TinySegmenter)."""
    return {
        "class_path": "synthrel_lightning.models.OODSegmenter",
        "init_args": {
            "segmenter": {
                "class_path": "synthrel_lightning.models.TinySegmenter",
                "init_args": {"num_classes": 19, "width": width, "depth": 2},
            },
            "num_classes": 19,
            "ood_score": "msp",
            "summary": False,
        },
    }


def write_tiny_zoo(folder: str | Path, names: list[str], width: int = 8) -> list[dict[str, Any]]:
    """Write one random-weight checkpoint per name (seeded by position); returns the zoo entries."""
    import torch

    from synthrel_lightning.correlation.zoo import ZooEntry, instantiate_model

    entries = []
    for i, name in enumerate(names):
        path = Path(folder) / f"{name}.ckpt"
        spec = tiny_model_spec(width)
        if not path.is_file():
            torch.manual_seed(1000 + i)
            model = instantiate_model(ZooEntry(name, model=spec))
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"state_dict": model.state_dict()}, path)
        entries.append({"name": name, "checkpoint": str(path), "model": spec})
    return entries


def tiny_study(folder: str | Path, models: int = 3, frames: int = 4, qc: bool = False) -> dict[str, Any]:
    """Keyword arguments of ``run_paper_study`` for a tiny study under ``folder`` (world, zoo and outputs)."""
    root = Path(folder)
    world = root / "world"
    size = [64, 128]

    def builder(kind: str, **init: Any) -> dict[str, Any]:
        return {"class_path": f"synthrel_lightning.study.demo_world.{kind}", "init_args": init}

    common = {"num_val": frames, "size": size}
    sets = [
        {"name": "scenes", "builder": builder("DemoScenes", root=str(world / "scenes"), num_train=0, **common)},
        {"name": "real_scenes",
         "builder": builder("DemoScenes", root=str(world / "real"), num_train=0, seed=1, **common)},
        {"name": "synthetic_objects", "builder": builder("DemoObjectsSet", root=str(world / "syn_obj"),
                                                          scenes=str(world / "scenes"), seed=5, **common)},
        {"name": "real_objects", "builder": builder("DemoObjectsSet", root=str(world / "real_obj"),
                                                     scenes=str(world / "real"), scene_seed=1, seed=6, **common)},
        {"name": "synthetic_fog", "builder": builder("DemoDomainSet", root=str(world / "syn_fog"),
                                                      scenes=str(world / "scenes"), domain="fog", seed=1, **common)},
        {"name": "real_fog", "builder": builder("DemoDomainSet", root=str(world / "real_fog"),
                                                 scenes=str(world / "real"), domain="fog", strength=0.6,
                                                 scene_seed=1, seed=2, **common)},
    ]  # fmt: skip
    frames_set = "synthrel_lightning.data.SyntheticFramesDataset"
    extra = {n: {"class_path": frames_set, "init_args": {"root": str(world / d)}}
             for n, d in (("synthetic_objects", "syn_obj"), ("real_objects", "real_obj"),
                          ("synthetic_fog", "syn_fog"), ("real_fog", "real_fog"))}  # fmt: skip
    kwargs: dict[str, Any] = {
        "zoo": write_tiny_zoo(root / "zoo", [f"tiny{i}" for i in range(models)]),
        "data": {
            "class_path": "synthrel_lightning.data.DemoDataModule",
            "init_args": {
                "root": str(world / "scenes"),
                "num_train": 0,
                "num_val": frames,
                "image_size": size,
                "eval_batch_size": frames,
                "extra_val_sets": extra,
            },
        },  # fmt: skip
        "pairs": [
            {"synthetic": "synthetic_objects", "real": "real_objects", "metrics": ["ap", "auroc"]},
            {"synthetic": "synthetic_fog", "real": "real_fog", "metrics": ["miou", "ece"]},
        ],
        "sets": sets,
        "output_dir": str(root / "study"),
        "trainer": {"accelerator": "cpu", "devices": 1},
        "correlation": {"bootstrap": 200, "methods": ["pearson", "spearman"]},
        "calibration": {
            "pairs": [{"synthetic": "synthetic_fog", "real": "real_fog", "name": "fog"}],
            "source_set": "demo",
            "bootstrap": 200,
            "pixels_per_image": 500,
            "methods": ["ece_grid"],
        },
        "progress": False,
    }
    if qc:
        kwargs["qc"] = {
            "sets": {n: extra[n] for n in ("synthetic_objects", "synthetic_fog")},
            "references": ["tiny0"],
            "thresholds": {"min_miou": 0.0},
            "contact_sheet": 1,
        }
    return kwargs
