"""The ``calibration`` stage: :func:`~synthrel_lightning.study.calibration_study.run_calibration_study` on the zoo.

Configuration (the study's ``calibration`` section)::

    calibration:
      pairs: [{synthetic: synthetic_fog, real: acdc_fog}, ...]   # DomainPair fields
      source_set: cityscapes          # where the source temperature is fitted (optional)
      methods: [ece_grid, nll]
      bootstrap: 10000
      pixels_per_image: 20000

Each model is evaluated only on the sets the study needs (a view of the study's datamodule),
and its cached statistics are reused only while the model's files, the data configuration and
these options hash the same.
"""

from __future__ import annotations

from typing import Any

from synthrel_lightning.correlation.pairs import slug
from synthrel_lightning.study.cache import config_hash
from synthrel_lightning.study.context import StudyContext
from synthrel_lightning.study.evaluate import entry_fingerprint
from synthrel_lightning.study.views import EvaluationSetsView

__all__ = ["run_calibration"]

_OPTIONS = (
    "methods",
    "grid",
    "num_bins",
    "pixels_per_image",
    "seed",
    "ci",
    "bootstrap",
    "distinct",
    "trust_checkpoint",
)


def run_calibration(ctx: StudyContext) -> dict[str, Any]:
    """Run the calibration study into ``<output>/calibration``; returns its summary."""
    from synthrel_lightning.study.calibration_study import DomainPair, run_calibration_study

    section = dict(ctx.calibration or {})
    pairs = [DomainPair(**dict(p)) for p in section.get("pairs") or []]
    if not pairs:
        raise ValueError("study: calibration: 'pairs' is empty; give [{synthetic: <set>, real: <set>}, ...]")
    source = section.get("source_set")
    options = {k: section[k] for k in _OPTIONS if k in section}
    if "grid" in options:
        options["grid"] = tuple(options["grid"])
    wanted = list(dict.fromkeys([*(s for p in pairs for s in (p.synthetic, p.real)), *([source] if source else [])]))
    out = ctx.stage_dir("calibration")
    # Stale statistics (another checkpoint, data or option) are removed before the study reads them back.
    for entry in ctx.zoo:
        key = config_hash(entry_fingerprint(entry), ctx.data, wanted, options, ctx.trainer)
        stats = out / "stats" / f"{slug(entry.name)}.npz"
        if ctx.cache.get("calibration", entry.name, None, key) is None:
            stats.unlink(missing_ok=True)
            ctx.cache.put("calibration", entry.name, None, key, {"stats": str(stats)})
    view = EvaluationSetsView(ctx.datamodule(), wanted)
    result = run_calibration_study(ctx.zoo, pairs, source, view, out, trainer=ctx.trainer, **options)
    return {
        "rows": len(result.rows),
        "summary": [s.to_dict() for s in result.summary],
        "failed": dict(result.failed),
    }
