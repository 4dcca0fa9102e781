"""Export a trained OOD segmenter for deployment: ONNX or TorchScript, checked against PyTorch.

Every export runs the graph it wrote (onnxruntime on CPU for ONNX, the loaded TorchScript
module otherwise) on a seeded image of the export size and compares the three outputs with
the PyTorch module; the maximum absolute differences are returned in the
:class:`ExportReport` and an export beyond ``atol`` is refused (its file removed).

Image sides are fixed at export: the graph is traced, and segmenters that pad their input
to a stride (SMP, Mask2Former, OneFormer) take branches that depend on the size. The batch
dimension is dynamic. ``dynamic_size=True`` makes height and width dynamic too, after
checking a second size against PyTorch; a graph that does not generalise is refused.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from synthrel_lightning.atomic import atomic_write
from synthrel_lightning.deploy.module import OUTPUT_NAMES, DeployableSegmenter, InputFormat

log = logging.getLogger(__name__)

ExportFormat = Literal["onnx", "torchscript"]
FORMATS: tuple[str, ...] = ("onnx", "torchscript")


class ExportError(RuntimeError):
    """An exported graph that does not reproduce the PyTorch module, or could not be written."""


@dataclass
class ExportReport:
    """What :func:`export_segmenter` wrote and how closely the exported graph reproduces PyTorch."""

    path: str
    format: str
    input_size: tuple[int, int]
    input_format: str
    dynamic_size: bool
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    checked_sizes: list[tuple[int, int]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain values, for JSON."""
        return asdict(self)

    def summary(self) -> str:
        """One line per fact."""
        diffs = ", ".join(f"{k} {v:.3g}" for k, v in self.max_abs_diff.items())
        return (
            f"exported {self.format}: {self.path}\n"
            f"input: image (B,3,{self.input_size[0]},{self.input_size[1]}) {self.input_format}"
            f"{' (height and width dynamic)' if self.dynamic_size else ''}\n"
            f"max |exported - PyTorch| over sizes {self.checked_sizes}: {diffs}"
        )


def _example(size: tuple[int, int], input_format: InputFormat, batch: int = 1, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    if input_format == "uint8":
        return torch.randint(0, 256, (batch, 3, *size), generator=g).float()
    return torch.randn(batch, 3, *size, generator=g)


def _diffs(got: list[np.ndarray] | tuple[Tensor, ...], ref: tuple[Tensor, ...]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, g, r in zip(OUTPUT_NAMES, got, ref):
        g = torch.as_tensor(np.asarray(g) if not isinstance(g, Tensor) else g)
        if tuple(g.shape) != tuple(r.shape):
            raise ExportError(f"exported output {name!r} has shape {tuple(g.shape)}, PyTorch {tuple(r.shape)}")
        if name == "prediction":
            # A different argmax is a disagreement of one class; report the fraction of pixels that differ.
            out["prediction_mismatch"] = float((g.long() != r.long()).double().mean())
        else:
            out[name] = float((g.double() - r.double()).abs().max())
    return out


def _write_onnx(graph: nn.Module, example: Tensor, path: Path, dynamic_size: bool, opset: int) -> None:
    maps = {0: "batch", 2: "height", 3: "width"} if dynamic_size else {0: "batch"}
    planes = {0: "batch", 1: "height", 2: "width"} if dynamic_size else {0: "batch"}
    dynamic_axes = {"image": maps, "class_scores": maps, "prediction": planes, "ood_score": planes}

    def write(tmp: str) -> None:
        torch.onnx.export(
            graph,
            (example,),
            tmp,
            input_names=["image"],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            dynamo=False,
        )

    atomic_write(path, write)


def _onnx_runner(path: Path) -> Callable[[Tensor], list[np.ndarray]]:
    try:
        import onnxruntime as ort
    except ImportError as err:  # pragma: no cover - depends on the installation
        raise ImportError(
            "export: checking an ONNX graph needs onnxruntime: pip install 'synthrel-lightning[deploy]'"
        ) from err
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"image": x.numpy()})


def _write_torchscript(graph: nn.Module, example: Tensor, path: Path) -> None:
    traced = torch.jit.trace(graph, (example,), check_trace=False)
    atomic_write(path, lambda tmp: torch.jit.save(traced, tmp))


def _torchscript_runner(path: Path) -> Callable[[Tensor], tuple[Tensor, ...]]:
    loaded = torch.jit.load(str(path), map_location="cpu")
    return lambda x: tuple(t.detach() for t in loaded(x))


def _hint(size_index: int) -> str:
    return (
        " (the traced graph does not generalise across sizes: export without dynamic_size, at the deployed size)"
        if size_index > 0
        else ""
    )


def export_segmenter(
    module: nn.Module,
    path: str | os.PathLike[str],
    format: ExportFormat = "onnx",
    input_size: tuple[int, int] = (512, 1024),
    input_format: InputFormat = "normalized",
    dynamic_size: bool = False,
    atol: float = 1e-3,
    opset: int = 17,
) -> ExportReport:
    """Export ``module`` (an OODSegmenter) with its temperature and OOD score folded in; check it; report.

    Args:
        module: the trained OOD segmenter (moved to CPU, float32, eval mode for the export).
        path: the file to write (``.onnx`` or ``.pt``); written atomically.
        format: ``"onnx"`` (checked with onnxruntime on CPU) or ``"torchscript"``.
        input_size: (height, width) of the deployed camera frames.
        input_format: ``"normalized"`` float images as the module takes them, or ``"uint8"`` 0..255 RGB.
        dynamic_size: also let height and width vary (checked on a second size; refused if wrong).
        atol: largest accepted absolute difference of class scores and OOD scores to PyTorch.
        opset: the ONNX opset.
    """
    if format not in FORMATS:
        raise ValueError(f"export: format must be one of {FORMATS}, got {format!r}")
    h, w = (int(v) for v in input_size)
    if h < 8 or w < 8:
        raise ValueError(f"export: input_size must be at least (8, 8), got {input_size!r}")
    out = Path(path)
    graph = DeployableSegmenter(module.cpu().float().eval(), input_format=input_format).eval()
    example = _example((h, w), input_format, batch=1)
    with torch.no_grad():
        graph(example)  # output kind and shape checks run once, outside the trace
        if format == "onnx":
            _write_onnx(graph, example, out, dynamic_size, opset)
            run: Callable[[Tensor], Any] = _onnx_runner(out)
        else:
            _write_torchscript(graph, example, out)
            run = _torchscript_runner(out)
        sizes = [(h, w)]
        if dynamic_size:
            sizes.append((h + 32, w + 64))
        report = ExportReport(str(out), format, (h, w), input_format, dynamic_size, checked_sizes=sizes)
        for i, size in enumerate(sizes):
            x = _example(size, input_format, batch=2, seed=1 + i)
            try:
                diffs = _diffs(run(x), graph(x))
            except Exception as err:
                out.unlink(missing_ok=True)
                raise ExportError(
                    f"export: the {format} graph fails on size {size}: {err}{_hint(i)}; {out} was not kept"
                ) from err
            for k, v in diffs.items():
                report.max_abs_diff[k] = max(report.max_abs_diff.get(k, 0.0), v)
            worst = max(diffs.get("class_scores", 0.0), diffs.get("ood_score", 0.0))
            if not worst <= atol:
                out.unlink(missing_ok=True)
                raise ExportError(
                    f"export: the {format} graph differs from PyTorch by {worst:.3g} > atol {atol} on size {size}"
                    f"{_hint(i)}; {out} was not kept"
                )
    log.info("%s", report.summary())
    return report


__all__ = ["ExportError", "ExportFormat", "ExportReport", "FORMATS", "export_segmenter"]
