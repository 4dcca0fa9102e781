"""``python -m synthrel_lightning qc``: score a synthetic set's frames (label faithfulness, object presence).

Example (a domain set, two reference segmenters from a zoo file, a filtered view reported)::

    python -m synthrel_lightning qc \\
        --dataset synthrel_lightning.data.CityscapesDataset --dataset.root outputs/domains/fog --dataset.split val \\
        --references recipes/zoo_cityscapes_public.yaml --select '[segformer_b5, mask2former_swin_l]' \\
        --filter min_miou=0.5

Inpainted and joint sets (``SyntheticFramesDataset``) add the object check with
``--masker synthrel_lightning.synthesis.object_masks.OpenVocabMasker``. Without references and
masker, ``--filter`` only reports what the thresholds keep of an existing table. Bad input exits
with status 2 and the cause on one line.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

from synthrel_lightning.correlation.zoo import ZooEntry
from synthrel_lightning.data.base import SegmentationDataset
from synthrel_lightning.synthesis.object_masks import ObjectMasker

__all__ = ["qc", "build_parser", "main"]


def _zoo_file(path: str) -> list[ZooEntry]:
    import yaml

    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"qc: references file {file} does not exist (expected a YAML list or a 'zoo:' list)")
    payload = yaml.safe_load(file.read_text(encoding="utf-8"))
    entries = payload.get("zoo", payload.get("references")) if isinstance(payload, dict) else payload
    if not isinstance(entries, list):
        raise ValueError(f"qc: references file {file} holds no list of zoo entries (a 'zoo:' or 'references:' list)")
    return [e if isinstance(e, ZooEntry) else ZooEntry(**e) for e in entries]


def qc(
    dataset: SegmentationDataset,
    references: list[ZooEntry] | str | None = None,
    select: list[str] | None = None,
    masker: ObjectMasker | None = None,
    qc_dir: str | None = None,
    object_names: str | None = None,
    eval_size: tuple[int, int] | None = None,
    device: str = "auto",
    context: float = 1.0,
    flush_every: int = 16,
    trust_checkpoint: bool = False,
    filter: str | None = None,
) -> dict[str, Any]:
    """Score a synthetic set's frames into its QC table (beside the set) and report a filtered view.

    Args:
        dataset: the set (class path + init args), e.g. ``synthrel_lightning.data.SyntheticFramesDataset``.
        references: reference segmenters: zoo entries, or a YAML file holding a ``zoo:`` list.
        select: names of the entries of ``references`` to use (default: all).
        masker: the object-mask model re-detecting each OOD object (e.g. ``OpenVocabMasker``).
        qc_dir: the QC folder (default ``<set folder>.qc``; never inside the set folder).
        object_names: names of the objects where frames have no ``_object.json``: JSON file or outlier bank.
        eval_size: resize frames to (h, w) for the references (default: native size).
        device: where the references run.
        context: re-detection crop side, in object sides.
        flush_every: frames between table writes.
        trust_checkpoint: allow checkpoints holding pickled objects (only files you trust).
        filter: thresholds to report, e.g. ``min_miou=0.5,min_object_iou=0.3``.
    """
    from synthrel_lightning.qc import QCThresholds, filter_report, load_qc_table, run_qc
    from synthrel_lightning.qc.table import check_qc_dir

    entries = _zoo_file(references) if isinstance(references, str) else list(references or [])
    if select is not None:
        known = [e.name for e in entries]
        missing = [s for s in select if s not in known]
        if missing:
            raise ValueError(f"qc: select names {missing} are not among the references {known}")
        entries = [e for e in entries if e.name in select]
    out: dict[str, Any] = {}
    if entries or masker is not None:
        transform = None
        if eval_size is not None:
            from synthrel_lightning.data.transforms import eval_transform

            transform = eval_transform(size=tuple(eval_size))
        result = run_qc(
            dataset, entries, masker, qc_dir, object_names, transform, device, context, flush_every, trust_checkpoint
        )
        out["summary"] = result.summary
        out["report"] = result.report()
    elif filter is None:
        raise ValueError("qc: nothing to do: pass --references and/or --masker to score, or --filter to report a view")
    if filter is not None:
        thresholds = QCThresholds.parse(filter)
        table = load_qc_table(dataset, qc_dir)
        view = filter_report(dataset, thresholds, table)
        slug = re.sub(r"[^A-Za-z0-9_.=-]+", "_", thresholds.describe())
        from synthrel_lightning.atomic import atomic_write_json

        atomic_write_json(check_qc_dir(qc_dir, dataset) / f"view_{slug}.json", view)
        out["view"] = view
    return out


def build_parser() -> Any:
    """The jsonargparse parser of ``qc``, built from :func:`qc`'s signature."""
    from synthrel_lightning.commands._parsing import function_parser

    parser = function_parser("qc", qc)
    parser.add_argument("--json", type=bool, default=False, help="print the summary (and view) as JSON on stdout")
    return parser


def _view_lines(view: dict[str, Any]) -> list[str]:
    lines = [
        f"view {view['thresholds']}: keeps {view['kept']} of {view['frames']} frames ({view['kept_fraction']:.1%}); "
        f"failed: {view['failed'] or 'none'}"
    ]
    for cls, v in view["per_class"].items():
        if v["frames"]:
            lines.append(
                f"  {cls}: {v['kept_frames']}/{v['frames']} frames, {v['kept_pixel_fraction']:.1%} of its pixels"
            )
    for obj, v in view["per_object"].items():
        lines.append(f"  object {obj}: {v['kept_frames']}/{v['frames']} frames")
    return lines


def main(args: list[str] | None = None) -> dict[str, Any]:
    """Run ``qc`` from command-line/YAML options; bad input exits with status 2 and its cause first."""
    from synthrel_lightning.commands._parsing import parse_kwargs
    from synthrel_lightning.data.io import DatasetError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if args is None else args)
    try:
        cfg, kwargs = parse_kwargs(build_parser(), qc, argv)
        out = qc(**kwargs)
    except (ValueError, TypeError, FileNotFoundError, DatasetError) as err:
        print(f"qc: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if "report" in out:
        print(out["report"], file=sys.stderr)
    if "view" in out:
        print("\n".join(_view_lines(out["view"])), file=sys.stderr)
    if cfg.json:
        print(json.dumps({k: v for k, v in out.items() if k != "report"}, indent=2, default=str))
    return out


if __name__ == "__main__":
    main()
