r"""End-to-end fit throughput: the Cityscapes SegFormer recipe fed from memory vs from the DataModule.

The model is the shape of ``recipes/cityscapes_segformer.yaml``: SegFormer-B0 (random weights,
built from a ``SegformerConfig``: nothing is downloaded), cross-entropy + sigmoid-sum
rejection, the ``sigmoid_sum`` score, AdamW + cosine schedule, ``compile_losses`` (it acts on
CUDA only; ``--no-compile`` turns it off) and bf16-mixed precision on a GPU. It trains in a
real Lightning ``Trainer`` on procedural street frames in the Cityscapes layout
(``leftImg8bit``/``gtFine`` PNGs written to a temp folder: a few unique frames, hard-linked
up to the number of frames a run reads, so every read still decodes a PNG) and a procedural
outlier bank. Three data sources, with the same model (compiled loss terms in every mode)
and the same Trainer set-up:

* ``a``: batches from memory: the loader's own batches, collected once, kept on the device and
  served in turn (through the DataModule's batch-transfer hooks, as the loader's are);
* ``b``: ``CityscapesOODDataModule`` without outliers;
* ``c``: ``CityscapesOODDataModule`` with banked outliers mixed in at probability ``--probability``.

Each mode fits ``--warmup`` untimed steps then ``--steps`` timed ones; a callback stamps
every ``on_train_batch_start``/``on_train_batch_end`` (synchronising CUDA at the end of a
step), so images/s = images of the timed steps / (end of the last step - end of the last
warm-up step), and the time from the end of one step to the start of the next is time the
accelerator waited: for the next batch from the loader, for its transfer to be queued, and
for Lightning's own per-step work, which mode ``a`` measures alone. Workers deliver batches
in waves (one batch per worker), so the preset step counts are rounded up to a multiple of
``--workers``. A first untimed fit on
memory batches compiles the loss and warms the allocator. Modes run in interleaved rounds;
the table gives medians and the ratios to mode ``a``. Options of the DataModule's
constructor can be set with ``--data-option key=value`` (YAML values); they apply to every
mode (``a``'s batches come from the same DataModule). On a CPU the training process uses one
thread (``--threads``) and the loader workers compete with it for the cores: the numbers
there check the script, not the data pipeline. ``benchmarks/device_check.sh`` runs the
full size on a GPU machine. From the repository root::

    PYTHONPATH=. python benchmarks/bench_fit_gpu.py --device cpu --size small
    PYTHONPATH=. python benchmarks/bench_fit_gpu.py --device cuda --size full --workers 14 \
        --json benchmarks/results/fit_gpu/bench_fit_gpu.json

This file holds the command line; the parts live in ``benchmarks/fit_gpu/`` (configuration and
presets, the frames and bank on disk, the model and data sources, the step timer, the run and its table).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fit_gpu.config import MODES, PRESETS, FitBenchConfig  # noqa: E402
from fit_gpu.pipeline import datamodule_options  # noqa: E402
from fit_gpu.run import format_table, run_benchmark  # noqa: E402
from fit_gpu.timing import StepTimer  # noqa: E402


def _pair(text: str, kind: type) -> tuple:
    parts = text.replace(",", "x").split("x")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected two values such as 512x1024, got {text!r}")
    return tuple(kind(p) for p in parts)


def _data_option(text: str) -> tuple[str, Any]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected key=value (a YAML value), got {text!r}")
    return key.strip(), yaml.safe_load(value)


def config_from_args(args: argparse.Namespace) -> FitBenchConfig:
    """The preset of ``--size`` with every option given on the command line applied over it."""
    values: dict[str, Any] = dict(PRESETS[args.size])
    for field in (
        "workers", "steps", "warmup", "rounds", "frame_size", "crop_size", "batch_size", "precision",
        "unique_frames", "bank_size", "memory_batches", "probability", "seed", "threads",
    ):  # fmt: skip
        value = getattr(args, field)
        if value is not None:
            values[field] = value
    if args.steps is None and values["workers"] > 0:  # whole waves of batches (one per worker)
        values["steps"] = math.ceil(values["steps"] / values["workers"]) * values["workers"]
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    return FitBenchConfig(
        device=args.device,
        modes=modes,
        compile_losses=not args.no_compile,
        data_options=dict(args.data_option or []),
        **values,
    )


def build_parser() -> argparse.ArgumentParser:
    """The command line: a size preset and options over it."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--size", choices=sorted(PRESETS), default="small", help="preset of the sizes below")
    p.add_argument("--workers", type=int, help="DataLoader workers (small: 2, full: 14)")
    p.add_argument("--steps", type=int, help="timed optimizer steps per mode and round (best a multiple of --workers)")
    p.add_argument("--warmup", type=int, help="untimed steps before them (workers start, first batches)")
    p.add_argument("--rounds", type=int, help="interleaved rounds of every mode; medians are reported")
    p.add_argument("--modes", default="a,b,c", help="modes to run, e.g. a,c")
    p.add_argument("--no-compile", action="store_true", help="leave the loss terms eager (compile_losses=False)")
    p.add_argument("--probability", type=float, help="outlier probability of mode c (default 0.5, the recipe's)")
    p.add_argument("--frame-size", type=lambda s: _pair(s, int), help="frames written, HxW")
    p.add_argument("--crop-size", type=lambda s: _pair(s, int), help="training crop, HxW")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--precision", help="Lightning precision (default: bf16-mixed on CUDA, 32-true on CPU)")
    p.add_argument("--unique-frames", type=int, help="distinct frames written (hard-linked up to the frames read)")
    p.add_argument("--bank-size", type=int, help="procedural outliers in the bank")
    p.add_argument("--memory-batches", type=int, help="distinct batches mode a cycles through")
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int, help="torch threads of the training process (default: 1 on CPU)")
    p.add_argument(
        "--data-option",
        action="append",
        type=_data_option,
        metavar="KEY=VALUE",
        help="CityscapesOODDataModule argument for every mode (YAML value), e.g. pin_memory=false; repeatable",
    )
    p.add_argument("--workdir", help="folder for the temporary frames and bank (default: the system temp folder)")
    p.add_argument("--json", type=Path, help="write the JSON record here (rewritten after every round)")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table, write the JSON record after every round."""
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*defined a `validation_step` but have no `val_dataloader`.*")

    def on_round(record: dict[str, Any]) -> None:
        if args.json is not None:
            from synthrel_lightning.atomic import atomic_write_json

            args.json.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(args.json, record)
        print(f"round {record['rounds_done']}/{config.rounds}: " + json.dumps(
            {m: round(r["rounds"][-1]["images_per_s"], 2) for m, r in record["modes"].items()}
        ), flush=True)  # fmt: skip

    record = run_benchmark(config, workdir=args.workdir, on_round=on_round)
    print("\n" + format_table(record))
    if args.json is not None:
        print(f"\nJSON: {args.json}")
    return record


__all__ = [
    "MODES",
    "PRESETS",
    "FitBenchConfig",
    "StepTimer",
    "build_parser",
    "config_from_args",
    "datamodule_options",
    "format_table",
    "main",
    "run_benchmark",
]


if __name__ == "__main__":
    main()
