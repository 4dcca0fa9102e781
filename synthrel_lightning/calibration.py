"""Post-hoc temperature scaling: fit one global temperature T on held-out (e.g. synthetic) logits.

Two fitting rules, both streaming over batches of ``(logits, target)``:

- ``"ece_grid"`` (the synthetic-data paper's protocol): T on the grid
  ``[0.5, 10)`` step ``0.01`` minimising the top-1 ECE with 15 equal-width bins over
  non-void pixels. One pass accumulates, for every T of the grid and every bin, the
  pixel count, the summed confidence and the summed accuracy; no pixel is stored.
- ``"nll"``: T minimising the mean negative log-likelihood (LBFGS on ``log T``), on a
  uniform random subsample of at most ``max_pixels`` pixels kept while streaming
  (random keys, smallest ``max_pixels`` kept), so memory does not grow with the set.

Pixels whose target is a train id ``0..K-1`` count; OOD (254) and void (255) pixels have
no correct class and are left out.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from synthrel_lightning.atomic import atomic_write
from synthrel_lightning.labels import OOD_ID, VOID_ID
from synthrel_lightning.metrics.functional import ece_from_sums, top1_bin_sums

if TYPE_CHECKING:
    import lightning as L

log = logging.getLogger(__name__)

LogitBatches = Iterable[tuple[Tensor, Tensor]]
"""Batches of ``(logits, target)``: (B,K,H,W) with (B,H,W), or (N,K) with (N,)."""

PAPER_GRID: tuple[float, float, float] = (0.5, 10.0, 0.01)
"""The authors' temperature grid: start, stop (excluded), step."""

# Elements (temperatures x pixels x classes) evaluated at once by the grid search.
_GRID_CHUNK_ELEMENTS = 1 << 23


def _as_batches(data: LogitBatches | tuple[Tensor, Tensor]) -> Iterable[tuple[Tensor, Tensor]]:
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(x, Tensor) for x in data):
        return [(data[0], data[1])]
    return data


def _flatten_valid(logits: Tensor, target: Tensor, num_classes: int | None, index: int) -> tuple[Tensor, Tensor]:
    """(N,K) logits and (N,) targets of the pixels carrying a train id, after checks."""
    where = f"calibration batch {index}"
    if not isinstance(logits, Tensor) or not isinstance(target, Tensor):
        raise TypeError(
            f"{where}: expected a (logits, target) pair of tensors, "
            f"got {type(logits).__name__}, {type(target).__name__}"
        )
    if logits.ndim == 4 and target.ndim == 3 and target.shape == (logits.shape[0], *logits.shape[2:]):
        flat = logits.movedim(1, -1).reshape(-1, logits.shape[1])
    elif logits.ndim == 2 and target.ndim == 1 and target.shape[0] == logits.shape[0]:
        flat = logits
    else:
        raise ValueError(
            f"{where}: logits {tuple(logits.shape)} and target {tuple(target.shape)} do not match; "
            "expected (B,K,H,W) with (B,H,W), or (N,K) with (N,)"
        )
    if target.dtype.is_floating_point:
        raise TypeError(f"{where}: target must hold integer train ids, got {target.dtype}")
    k = flat.shape[1]
    if num_classes is not None and k != num_classes:
        raise ValueError(f"{where}: {k} classes, but earlier batches had {num_classes}")
    t = target.reshape(-1).to(flat.device).long()
    valid = (t >= 0) & (t < k)
    bad = ~valid & (t != VOID_ID) & (t != OOD_ID)
    if bool(bad.any()):
        raise ValueError(
            f"{where}: target holds values {sorted(t[bad].unique().tolist())[:10]} outside 0..{k - 1}, "
            f"{OOD_ID} (OOD) and {VOID_ID} (void)"
        )
    flat, t = flat[valid], t[valid]
    if flat.numel() and not bool(torch.isfinite(flat).all()):
        raise ValueError(f"{where}: logits hold NaN or infinite values")
    return flat.float(), t


def temperature_grid(grid: tuple[float, float, float] = PAPER_GRID) -> Tensor:
    """The temperatures ``start, start+step, ...`` below ``stop`` (float64)."""
    start, stop, step = (float(v) for v in grid)
    if not (start > 0 and stop > start and step > 0):
        raise ValueError(f"temperature grid must be (start > 0, stop > start, step > 0), got {grid!r}")
    n = math.ceil((stop - start) / step - 1e-9)
    return start + step * torch.arange(n, dtype=torch.float64)


class _BinnedTop1:
    """Per-(temperature, bin) sums of count, confidence and correctness for top-1 ECE."""

    def __init__(self, temperatures: Tensor, num_bins: int) -> None:
        if num_bins < 1:
            raise ValueError(f"num_bins must be >= 1, got {num_bins!r}")
        self.temperatures = temperatures.double().reshape(-1)
        if not bool((self.temperatures > 0).all()):
            raise ValueError(f"temperatures must be > 0, got {self.temperatures.tolist()[:10]}")
        self.num_bins = int(num_bins)
        self.sums = torch.zeros(self.temperatures.numel(), 3, self.num_bins, dtype=torch.float64)
        self.pixels = 0

    def update(self, z: Tensor, y: Tensor) -> None:
        n, k = z.shape
        if n == 0:
            return
        device = z.device
        self.sums = self.sums.to(device)
        temps = self.temperatures.to(device=device, dtype=torch.float32)
        # The top-1 class does not depend on T > 0; only the confidence does.
        shifted = z - z.amax(dim=1, keepdim=True)
        correct = z.argmax(dim=1) == y
        n_t = temps.numel()
        px_chunk = max(1, min(n, _GRID_CHUNK_ELEMENTS // max(1, k)))
        t_chunk = max(1, min(n_t, _GRID_CHUNK_ELEMENTS // (px_chunk * k)))
        for p0 in range(0, n, px_chunk):
            d = shifted[p0 : p0 + px_chunk]
            c = correct[p0 : p0 + px_chunk]
            for t0 in range(0, n_t, t_chunk):
                t = temps[t0 : t0 + t_chunk]
                conf = torch.exp(d.unsqueeze(0) / t.view(-1, 1, 1)).sum(dim=-1).reciprocal()  # (Tc, P)
                self.sums[t0 : t0 + t.numel()] += top1_bin_sums(conf, c, self.num_bins)
        self.pixels += n

    def ece(self) -> Tensor:
        return ece_from_sums(self.sums).cpu()


def ece_by_temperature(
    data: LogitBatches | tuple[Tensor, Tensor], temperatures: Tensor | list[float], num_bins: int = 15
) -> Tensor:
    """Top-1 ECE (equal-width bins, non-void pixels) of ``logits / T`` for each T, in one streaming pass."""
    acc = _BinnedTop1(torch.as_tensor(temperatures, dtype=torch.float64), num_bins)
    k: int | None = None
    seen = 0
    for i, (logits, target) in enumerate(_as_batches(data)):
        z, y = _flatten_valid(logits, target, k, i)
        k = logits.shape[1]
        acc.update(z, y)
        seen += 1
    _check_nonempty(seen, acc.pixels)
    return acc.ece()


def expected_calibration_error(logits: Tensor, target: Tensor, num_bins: int = 15, temperature: float = 1.0) -> float:
    """Top-1 ECE with equal-width bins over non-void pixels of ``logits / temperature``."""
    return float(ece_by_temperature((logits, target), [temperature], num_bins)[0])


def _check_nonempty(batches: int, pixels: int) -> None:
    if batches == 0:
        raise ValueError("fit_temperature: no (logits, target) batches were given; the calibration set is empty")
    if pixels == 0:
        raise ValueError(
            f"fit_temperature: the {batches} batch(es) hold no pixel with a train id (all void {VOID_ID} "
            f"or OOD {OOD_ID}); temperature scaling needs labelled in-distribution pixels"
        )


class _PixelReservoir:
    """A uniform random subsample (without replacement) of at most ``cap`` streamed pixels."""

    def __init__(self, cap: int, seed: int) -> None:
        if cap < 1:
            raise ValueError(f"max_pixels must be >= 1, got {cap!r}")
        self.cap = int(cap)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.keys: Tensor | None = None
        self.z: Tensor | None = None
        self.y: Tensor | None = None
        self.pixels = 0

    def update(self, z: Tensor, y: Tensor) -> None:
        n = z.shape[0]
        if n == 0:
            return
        self.pixels += n
        keys = torch.rand(n, generator=self.generator, dtype=torch.float64).to(z.device)
        if self.keys is None:
            self.keys, self.z, self.y = keys[:0], z[:0], y[:0]
        assert self.z is not None and self.y is not None
        if self.keys.numel() >= self.cap:
            # Only pixels with a key below the current cap-th smallest can enter.
            take = keys < self.keys.max()
            keys, z, y = keys[take], z[take], y[take]
        keys = torch.cat([self.keys, keys])
        z = torch.cat([self.z, z])
        y = torch.cat([self.y, y])
        if keys.numel() > self.cap:
            idx = torch.topk(keys, self.cap, largest=False).indices
            keys, z, y = keys[idx], z[idx], y[idx]
        self.keys, self.z, self.y = keys, z, y


def _fit_nll(z: Tensor, y: Tensor, max_iter: int) -> float:
    # Callers may sit inside Lightning's inference-mode loops; the fit needs autograd.
    with torch.inference_mode(False), torch.enable_grad():
        z, y = z.clone(), y.clone()
        log_t = torch.zeros((), dtype=torch.float32, device=z.device, requires_grad=True)
        optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(z / log_t.exp(), y)
            loss.backward()
            return loss

        optimizer.step(closure)
    t = float(log_t.detach().exp())
    if not math.isfinite(t) or t <= 0:
        raise FloatingPointError(f"fit_temperature: NLL fit diverged (T={t}); try method='ece_grid'")
    return t


def fit_temperature(
    data: LogitBatches | tuple[Tensor, Tensor],
    method: str = "nll",
    grid: tuple[float, float, float] = PAPER_GRID,
    num_bins: int = 15,
    max_pixels: int = 2_000_000,
    seed: int = 0,
    max_iter: int = 100,
) -> float:
    """Fit one global temperature on ``(logits, target)`` batches (or one collected pair).

    Args:
        data: an iterable of ``(logits, target)`` pairs, streamed once, or a single pair.
            Logits are unscaled (B,K,H,W) or (N,K); targets train ids with 254/255 left out.
        method: ``"nll"`` (LBFGS on the mean NLL over a pixel subsample) or ``"ece_grid"``
            (the paper's grid search of the top-1 ECE over every pixel).
        grid: ``(start, stop, step)`` of the ECE grid; stop is excluded.
        num_bins: equal-width confidence bins of the ECE.
        max_pixels: cap of the NLL method's uniform pixel subsample.
        seed: seed of that subsample.
        max_iter: LBFGS iterations of the NLL method.

    Returns:
        T such that ``logits / T`` is calibrated.
    """
    if method == "ece_grid":
        temps = temperature_grid(grid)
        ece = ece_by_temperature(data, temps, num_bins)
        best = int(torch.argmin(ece))
        if best in (0, temps.numel() - 1):
            log.warning("fit_temperature: the best T=%.4g is at the edge of the grid %s", float(temps[best]), grid)
        return round(float(temps[best]), 10)
    if method != "nll":
        raise ValueError(f"fit_temperature: method must be 'nll' or 'ece_grid', got {method!r}")
    reservoir = _PixelReservoir(max_pixels, seed)
    k: int | None = None
    seen = 0
    for i, (logits, target) in enumerate(_as_batches(data)):
        z, y = _flatten_valid(logits, target, k, i)
        k = logits.shape[1]
        reservoir.update(z.detach(), y)
        seen += 1
    _check_nonempty(seen, reservoir.pixels)
    assert reservoir.z is not None and reservoir.y is not None
    return _fit_nll(reservoir.z, reservoir.y, max_iter)


def _module_device(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def _images_and_labels(batch: Any, index: int) -> tuple[Tensor, Tensor]:
    if isinstance(batch, dict):
        if "image" not in batch or "label" not in batch:
            raise KeyError(f"collect_logits: batch {index} lacks 'image' or 'label' (keys: {sorted(batch)})")
        return batch["image"], batch["label"]
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise TypeError(f"collect_logits: batch {index} must be a dict with 'image'/'label' or an (image, label) pair")


def collect_logits(
    module: nn.Module,
    dataloader: Iterable[Any],
    max_batches: int | None = None,
    device: str | torch.device | None = None,
    to_cpu: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(unscaled logits (B,K,H,W), label (B,H,W))`` per batch, computed without gradients.

    Uses ``module.raw_logits(images)`` when the module has it (logits before any
    temperature), else ``module(images)``. The module is put in eval mode while
    iterating and restored afterwards. Nothing is kept between batches.
    """
    device = torch.device(device) if device is not None else _module_device(module)
    forward = getattr(module, "raw_logits", None) or module
    was_training = module.training
    module.eval()
    try:
        for i, batch in enumerate(dataloader):
            if max_batches is not None and i >= max_batches:
                break
            images, labels = _images_and_labels(batch, i)
            with torch.no_grad():
                logits = forward(images.to(device))
            if isinstance(logits, dict):
                logits = logits["out"]
            labels = labels.to(logits.device)
            if logits.shape[-2:] != labels.shape[-2:]:
                logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
            logits = logits.float()
            if to_cpu:
                logits, labels = logits.cpu(), labels.cpu()
            yield logits, labels
    finally:
        module.train(was_training)


def named_loader(loaders: Any, names: list[str] | None, set_name: str | None, who: str) -> Any:
    """Pick the loader called ``set_name`` among validation loaders (list, dict or one loader).

    ``names`` label a list's loaders in order (default ``val_0``, ``val_1``...); a dict's keys
    are its names. With ``set_name=None`` the only loader is taken.
    """
    if isinstance(loaders, dict):
        names, loaders = list(loaders), list(loaders.values())
    elif isinstance(loaders, (list, tuple)):
        loaders = list(loaders)
    elif loaders is None:
        loaders = []
    else:
        loaders = [loaders]
    if names is None:
        names = [f"val_{i}" for i in range(len(loaders))]
    elif len(names) != len(loaders):
        raise ValueError(f"{who}: {len(loaders)} validation loaders but {len(names)} set names {list(names)}")
    if not loaders:
        raise ValueError(f"{who}: there is no validation dataloader to fit the temperature on")
    if set_name is None:
        if len(loaders) == 1:
            return loaders[0]
        raise ValueError(f"{who}: several validation sets {names}; choose one with set_name")
    if set_name not in names:
        raise ValueError(f"{who}: set_name {set_name!r} is not a validation set; available: {names}")
    return loaders[names.index(set_name)]


def datamodule_loader(datamodule: Any, set_name: str | None, who: str = "calibrate") -> Any:
    """The validation loader named ``set_name`` of a (set-up) LightningDataModule."""
    names = getattr(datamodule, "val_set_names", None)
    return named_loader(datamodule.val_dataloader(), list(names) if names is not None else None, set_name, who)


def _save_atomic(obj: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def calibrate(
    model: L.LightningModule,
    data: L.LightningDataModule,
    ckpt_path: str | Path,
    set_name: str | None = None,
    output: str | Path | None = None,
    method: str = "nll",
    grid: tuple[float, float, float] = PAPER_GRID,
    num_bins: int = 15,
    max_pixels: int = 2_000_000,
    max_batches: int | None = None,
    seed: int = 0,
    device: str = "auto",
) -> float:
    """Fit T on a named validation set for a checkpoint and save a copy of it with T set.

    ``model`` is built from the same configuration as at training time (its weights
    come from ``ckpt_path``); it must have a scalar buffer ``temperature``. The output
    (default: ``<checkpoint stem>-calibrated.ckpt`` beside it) is the input checkpoint,
    optimizer and loop states included, with ``state_dict["temperature"] = T`` and a
    ``calibration`` entry recording how T was fitted; it is written atomically.
    Returns T.
    """
    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"calibrate: checkpoint {ckpt_path} does not exist")
    # Lightning checkpoints pickle hyper-parameters, so weights-only loading would refuse them.
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"calibrate: {ckpt_path} is not a Lightning checkpoint (no 'state_dict' entry)")
    if "temperature" not in state:
        raise ValueError(
            f"calibrate: {ckpt_path} has no 'temperature' buffer in its state_dict; the model must register "
            "a scalar buffer named 'temperature' (OODSegmenter does)"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"calibrate: {ckpt_path} does not match the configured model: {err}") from err
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    data.prepare_data()
    data.setup("validate")
    loader = datamodule_loader(data, set_name)
    temperature = fit_temperature(
        collect_logits(model, loader, max_batches=max_batches),
        method=method,
        grid=grid,
        num_bins=num_bins,
        max_pixels=max_pixels,
        seed=seed,
    )
    state["temperature"] = torch.full_like(state["temperature"], temperature)
    checkpoint["calibration"] = {
        "temperature": temperature,
        "method": method,
        "set_name": set_name,
        "source_checkpoint": str(ckpt_path),
    }
    out = Path(output) if output is not None else ckpt_path.with_name(f"{ckpt_path.stem}-calibrated.ckpt")
    _save_atomic(checkpoint, out)
    log.info("calibrate: T=%.4f fitted on %r (%s); saved %s", temperature, set_name, method, out)
    return temperature


def main(args: list[str] | None = None) -> None:
    """``python -m synthrel_lightning calibrate --config recipe.yaml --ckpt_path x.ckpt [--set_name fog]``.

    Reads the training recipe's ``model`` and ``data`` sections (its ``trainer``,
    ``optimizer``, ``lr_scheduler`` and ``seed_everything`` entries are accepted and ignored).
    """
    import lightning as L
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog="python -m synthrel_lightning calibrate", description=main.__doc__)
    parser.add_argument("--config", action=ActionConfigFile, help="training recipe (YAML) with model and data")
    parser.add_subclass_arguments(L.LightningModule, "model", required=True, help="the model, as in the recipe")
    parser.add_subclass_arguments(L.LightningDataModule, "data", required=True, help="the data, as in the recipe")
    parser.set_defaults({"model": {"class_path": "synthrel_lightning.models.OODSegmenter"}})
    parser.add_function_arguments(calibrate, skip={"model", "data"})
    for ignored in ("trainer", "optimizer", "lr_scheduler"):
        parser.add_argument(f"--{ignored}", type=Any, default=None, help="ignored (read from training recipes)")
    parser.add_argument("--seed_everything", type=Any, default=None, help="ignored (read from training recipes)")
    cfg = parser.parse_args(args)
    init = (getattr(parser, "instantiate", None) or parser.instantiate_classes)(cfg)
    kwargs = {key: init[key] for key in inspect.signature(calibrate).parameters}
    temperature = calibrate(**kwargs)
    print(f"temperature: {temperature:.6g}")


__all__ = [
    "PAPER_GRID",
    "LogitBatches",
    "calibrate",
    "datamodule_loader",
    "main",
    "named_loader",
    "collect_logits",
    "ece_by_temperature",
    "expected_calibration_error",
    "fit_temperature",
    "temperature_grid",
]
