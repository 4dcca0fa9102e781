"""Top-1 calibration bin sums for a whole grid of temperatures, vectorised over temperatures and chunked.

For every temperature T of a grid and every equal-width confidence bin, the pixel count,
the summed top-1 confidence of ``softmax(z / T)`` and the summed correctness: the input
of the ECE (:func:`synthrel_lightning.metrics.functional.ece_from_sums`) at each T.

The top-1 class does not depend on T > 0, so correctness is computed once per pixel;
the top-1 confidence is ``1 / sum_k exp((z_k - z_max) / T)``. :func:`grid_bin_sums`
evaluates it as ``1 / (1 + sum_k 2 ** (a_k / T))`` over the K - 1 other classes, with
``a_k = (z_k - z_max) log2(e)`` (``exp2`` is about 2.5x cheaper than ``exp`` on CPUs),
laid out as (classes, temperatures, pixels) so the class sum runs over whole rows, in
chunks that fit a CPU cache or a GPU's memory, into work buffers allocated once. The
few (T, pixel) pairs whose confidence lies within :data:`EDGE_MARGIN` of a bin edge are
recomputed with the direct formula of :func:`grid_bin_sums_reference` (``exp``, then a
sum over each pixel's classes), so every pixel lands in the bin the direct computation
puts it in; the confidence sums differ from it only by float32 rounding (about 1e-7 per
pixel, summed in float64: ECE values agree to about 1e-8, so the grid's argmin is the
same unless two temperatures' ECE are that close).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

from synthrel_lightning.metrics.functional import top1_bin_sums

EDGE_MARGIN = 5e-4
"""Distance to a bin edge (in units of ``confidence * num_bins``) below which a pair is recomputed directly.

The two evaluations differ by a few float32 roundings: at most about 2e-5 in these units (the
class sum's rounding and exp2's argument; 9e-6 measured on random 19-class logits), 25x below the margin.
"""

_LOG2E = math.log2(math.e)

_MIN_PIXELS_PER_WORKER = 2048


def chunk_elements(device: torch.device) -> int:
    """Elements of the (classes, temperatures, pixels) work tensor per chunk: a CPU cache's worth, 512 MB on a GPU."""
    return 1 << 27 if device.type != "cpu" else 1 << 20


def _check(z: Tensor, y: Tensor, temperatures: Tensor, num_bins: int) -> None:
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins!r}")
    if z.ndim != 2 or y.shape != z.shape[:1]:
        raise ValueError(f"expected (N, K) logits and (N,) targets, got {tuple(z.shape)} and {tuple(y.shape)}")
    if not bool((temperatures > 0).all()):
        raise ValueError(f"temperatures must be > 0, got {temperatures.tolist()[:10]}")


def grid_bin_sums_reference(z: Tensor, y: Tensor, temperatures: Tensor, num_bins: int = 15) -> Tensor:
    """The direct definition: ``softmax(z / T)`` over all classes for every T; sums ``(T, 3, num_bins)`` float64.

    Costs ``T x N x K`` exponentials (950 x 19 per pixel on the paper's grid); kept as the
    definition :func:`grid_bin_sums` is checked against.
    """
    _check(z, y, temperatures, num_bins)
    z = z.float()
    temps = temperatures.to(device=z.device, dtype=torch.float32).reshape(-1)
    shifted = z - z.amax(dim=1, keepdim=True)
    correct = z.argmax(dim=1) == y.to(z.device)
    out = torch.zeros(temps.numel(), 3, num_bins, dtype=torch.float64, device=z.device)
    n, k = z.shape
    budget = 1 << 23
    px_chunk = max(1, min(n, budget // max(1, k)))
    t_chunk = max(1, min(temps.numel(), budget // (px_chunk * k)))
    for p0 in range(0, n, px_chunk):
        d = shifted[p0 : p0 + px_chunk]
        c = correct[p0 : p0 + px_chunk]
        for t0 in range(0, temps.numel(), t_chunk):
            t = temps[t0 : t0 + t_chunk]
            conf = torch.exp(d.unsqueeze(0) / t.view(-1, 1, 1)).sum(dim=-1).reciprocal()  # (Tc, P)
            out[t0 : t0 + t.numel()] += top1_bin_sums(conf, c, num_bins)
    return out


def _direct_confidence(shifted: Tensor, temps: Tensor) -> Tensor:
    """``1 / sum_k exp(shifted[i, k] / temps[i])`` per row, as :func:`grid_bin_sums_reference` evaluates it."""
    return torch.exp(shifted / temps.unsqueeze(1)).sum(dim=-1).reciprocal()


def grid_bin_sums(
    z: Tensor, y: Tensor, temperatures: Tensor, num_bins: int = 15, max_elements: int | None = None
) -> Tensor:
    """Top-1 bin sums ``(T, 3, num_bins)`` float64 (count, confidence, correctness) of ``z / T`` for each T.

    Args:
        z: ``(N, K)`` logits (float32 is used), on any device; the work runs there.
        y: ``(N,)`` target classes (all in ``0..K-1``).
        temperatures: the T values (> 0).
        num_bins: equal-width confidence bins.
        max_elements: size of the work tensor per chunk (default :func:`chunk_elements` of the device).

    Every pixel is counted in the bin :func:`grid_bin_sums_reference` puts it in. On a CPU
    the pixels are split between ``torch.get_num_threads()`` Python threads, each running
    single-threaded torch ops (many small ops parallelised inside torch lose most of their
    time in thread synchronisation, worse on a loaded machine).
    """
    _check(z, y, temperatures, num_bins)
    workers = min(torch.get_num_threads(), z.shape[0] // _MIN_PIXELS_PER_WORKER)
    if z.device.type != "cpu" or workers < 2:
        return _grid_bin_sums(z, y, temperatures, num_bins, max_elements)
    bounds = [z.shape[0] * i // workers for i in range(workers + 1)]
    threads = torch.get_num_threads()

    def part(i: int) -> Tensor:
        torch.set_num_threads(1)
        lo, hi = bounds[i], bounds[i + 1]
        return _grid_bin_sums(z[lo:hi], y[lo:hi], temperatures, num_bins, max_elements)

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            parts = list(pool.map(part, range(workers)))
    finally:
        torch.set_num_threads(threads)
    return torch.stack(parts).sum(dim=0)


def _grid_bin_sums(z: Tensor, y: Tensor, temperatures: Tensor, num_bins: int, max_elements: int | None) -> Tensor:
    z = z.float()
    device = z.device
    temps = temperatures.to(device=device, dtype=torch.float32).reshape(-1)
    nt = temps.numel()
    n, k = z.shape
    out = torch.zeros(nt, 3, num_bins, dtype=torch.float64, device=device)
    if n == 0:
        return out
    shifted = z - z.amax(dim=1, keepdim=True)  # <= 0, the top class at 0
    correct = (z.argmax(dim=1) == y.to(device)).long()
    # The top class adds exactly 2 ** 0 = 1: keep the other K - 1, ascending (small terms summed first).
    others = shifted.sort(dim=1).values[:, :-1]
    scaled = (others * _LOG2E).t().contiguous()  # (K-1, N): 2 ** (scaled / T) == exp(shifted / T)
    rows = k - 1
    budget = max_elements or chunk_elements(device)
    px_chunk = max(1, min(n, budget // (max(1, rows) * 16)))
    t_chunk = max(1, min(nt, budget // (max(1, rows) * px_chunk)))
    # Work buffers reused by every chunk (fresh large CPU tensors cost a page fault per page).
    pairs = t_chunk * px_chunk
    work = torch.empty(rows * pairs, dtype=torch.float32, device=device)
    conf_buf = torch.empty(pairs, dtype=torch.float32, device=device)
    scaled_buf = torch.empty(pairs, dtype=torch.float32, device=device)
    frac_buf = torch.empty(pairs, dtype=torch.float32, device=device)
    near_buf = torch.empty(pairs, dtype=torch.bool, device=device)
    index_buf = torch.empty(pairs, dtype=torch.int64, device=device)
    conf64_buf = torch.empty(pairs, dtype=torch.float64, device=device)
    # Flat (temperature, correct, bin) index of a chunk: one bincount gives counts and correct counts.
    t_offset = (torch.arange(t_chunk, device=device, dtype=torch.int64) * (2 * num_bins)).view(-1, 1)
    for p0 in range(0, n, px_chunk):
        p1 = min(n, p0 + px_chunk)
        pc = p1 - p0
        a = scaled[:, p0:p1].contiguous().unsqueeze(1)
        offset = t_offset + (correct[p0:p1] * num_bins).view(1, -1)
        for t0 in range(0, nt, t_chunk):
            t = temps[t0 : t0 + t_chunk]
            tc = t.numel()
            m = tc * pc
            x = torch.div(a, t.view(1, -1, 1), out=work[: rows * m].view(rows, tc, pc)).exp2_()
            conf = torch.sum(x, dim=0, out=conf_buf[:m].view(tc, pc)).add_(1.0).reciprocal_()  # (Tc, P)
            # conf * num_bins, with 1.0 (the last bin's closed end, not an edge) moved off the edge
            scaled_conf = torch.mul(conf, num_bins, out=scaled_buf[:m].view(tc, pc)).clamp_max_(num_bins - 0.5)
            frac = torch.round(scaled_conf, out=frac_buf[:m].view(tc, pc)).sub_(scaled_conf).abs_()
            near = torch.lt(frac, EDGE_MARGIN, out=near_buf[:m].view(tc, pc))
            ti, pi = near.nonzero(as_tuple=True)
            if ti.numel():
                exact = _direct_confidence(shifted[p0 + pi], t[ti])
                conf[ti, pi] = exact
                scaled_conf[ti, pi] = (exact * num_bins).clamp_max_(num_bins - 0.5)
            index = index_buf[:m].view(tc, pc)
            index.copy_(scaled_conf)  # floor: the confidence is > 0
            index += offset[:tc]
            index = index.view(-1)
            size = tc * 2 * num_bins
            counts = torch.bincount(index, minlength=size).view(tc, 2, num_bins)
            conf_sums = torch.zeros(size, dtype=torch.float64, device=device)
            conf_sums.scatter_add_(0, index, conf64_buf[:m].copy_(conf.view(-1)))
            block = out[t0 : t0 + tc]
            block[:, 0] += counts.sum(dim=1)
            block[:, 1] += conf_sums.view(tc, 2, num_bins).sum(dim=1)
            block[:, 2] += counts[:, 1]
    return out


__all__ = ["EDGE_MARGIN", "chunk_elements", "grid_bin_sums", "grid_bin_sums_reference"]
