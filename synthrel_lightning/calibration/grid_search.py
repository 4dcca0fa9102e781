"""The ECE grid search of temperature scaling, with the grid extended while the best T lies on one of its edges.

The authors' grid is ``[0.5, 10)`` step ``0.01`` (Loiseau et al., ECCV 2024; relis'
``uncertainty_helpers.find_best_temperature_grid_search``). A model whose best temperature lies
outside it (an under-confident model wants T < 0.5) gets the grid's edge, which is not the
minimum of the ECE. Here, while the best T is the lowest temperature searched, the search goes
on over ``[lo / 2, lo)`` (step ``min(step, lo / 20)``); while it is the highest, over
``[hi, 2 hi)`` (same step); at most :data:`MAX_GRID_EXTENSIONS` times. Each extension is
recorded in plain words in the fit (and logged), so a report says where T was found.

Every extension streams the data again: exact when the data can be iterated again (a list, a
loader, a factory of logits such as :class:`~synthrel_lightning.calibration.logits.LogitStream`);
a one-shot iterator is searched further on a uniform subsample of at most ``max_pixels`` of its
sampled pixels, kept while streaming (all of them when fewer), and the fit says so.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
from torch import Tensor

log = logging.getLogger(__name__)

MAX_GRID_EXTENSIONS = 12
"""Extensions of the grid beyond each of its edges at most (12 halvings of 0.5: T down to 1.2e-4)."""


def is_replayable(data: object) -> bool:
    """Whether iterating ``data`` again yields the same batches (not a one-shot iterator or generator)."""
    if isinstance(data, (tuple, list)):
        return True
    try:
        return iter(data) is not data  # type: ignore[call-overload]
    except TypeError:
        return False


def _lower_extension(lo: float, step: float) -> tuple[Tensor, float, float]:
    """Temperatures of ``[lo / 2, lo)`` and the new lower bound and step."""
    new_lo = lo / 2
    new_step = min(step, new_lo / 20)
    n = math.ceil((lo - new_lo) / new_step - 1e-9)
    return new_lo + new_step * torch.arange(n, dtype=torch.float64), new_lo, new_step


def _upper_extension(hi: float, step: float) -> tuple[Tensor, float]:
    """Temperatures of ``[hi, 2 hi)`` and the new upper bound."""
    n = math.ceil(hi / step - 1e-9)
    return hi + step * torch.arange(n, dtype=torch.float64), 2 * hi


def search_grid(
    evaluate: Callable[[Tensor], Tensor],
    temps: Tensor,
    ece: Tensor,
    grid: tuple[float, float, float],
    extend: bool = True,
    who: str = "fit_temperature",
) -> tuple[float, float, tuple[str, ...], tuple[float, float]]:
    """Best T of an evaluated grid, extending it while T is on an edge.

    Args:
        evaluate: ECE of each temperature of a 1-D float64 tensor (one pass over the data).
        temps, ece: the grid ``grid`` = ``(start, stop, step)`` and its ECE values.
        extend: search beyond an edge the best T lies on (``False``: only report it).

    Returns:
        ``(T, ECE at T, notes, (lowest T searched, upper bound searched))``; ``notes`` says, in
        words, each time T lay on an edge and what was searched then.
    """
    start, stop, step = (float(v) for v in grid)
    lo, hi, lo_step = start, stop, step
    notes: list[str] = []
    order = torch.argsort(temps, stable=True)
    temps, ece = temps[order], ece[order]
    for _ in range(2 * MAX_GRID_EXTENSIONS + 1):
        best = int(torch.argmin(ece))
        t = float(temps[best])
        at_low, at_high = best == 0, best == temps.numel() - 1
        if not (at_low or at_high):
            break
        side = "lower" if at_low else "upper"
        where = f"[{lo:.6g}, {hi:.6g})"
        lows = sum("lower edge" in n for n in notes)
        highs = sum("upper edge" in n for n in notes)
        if not extend or (at_low and lows >= MAX_GRID_EXTENSIONS) or (at_high and highs >= MAX_GRID_EXTENSIONS):
            why = "grid extension is off" if not extend else f"after {MAX_GRID_EXTENSIONS} extensions"
            notes.append(f"T={t:.6g} is on the {side} edge of the searched temperatures {where} ({why}): not a minimum")
            break
        if at_low:
            new, lo, lo_step = _lower_extension(lo, lo_step)
            searched = f"[{lo:.6g}, {float(temps[0]):.6g}) step {lo_step:.6g}"
        else:
            new, hi = _upper_extension(hi, step)
            searched = f"[{float(new[0]):.6g}, {hi:.6g}) step {step:.6g}"
        notes.append(f"T={t:.6g} was on the {side} edge of {where}: searched {searched} too")
        log.warning(
            "%s: the best T=%.6g is on the %s edge of %s; extending the grid to %s", who, t, side, where, searched
        )
        temps = torch.cat([temps, new])
        ece = torch.cat([ece, evaluate(new).to(ece)])
        order = torch.argsort(temps, stable=True)
        temps, ece = temps[order], ece[order]
    if notes and "not a minimum" in notes[-1]:
        log.warning("%s: %s", who, notes[-1])
    elif notes:
        log.warning("%s: the best T=%.6g lies inside the extended grid [%.6g, %.6g)", who, t, lo, hi)
    return round(t, 10), float(ece[best]), tuple(notes), (lo, hi)


__all__ = ["MAX_GRID_EXTENSIONS", "is_replayable", "search_grid"]
