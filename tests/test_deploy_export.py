"""ONNX and TorchScript export of OOD segmenters with temperature and OOD score folded in, checked against PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from synthrel_lightning.deploy import DeployableSegmenter, ExportError, export_segmenter
from synthrel_lightning.models import HFMask2Former, OODSegmenter, TinySegmenter
from synthrel_lightning.testing import tiny_mask2former_config

MASK2FORMER = tiny_mask2former_config(decoder_layers=2)


def _per_pixel(score: str = "energy") -> OODSegmenter:
    torch.manual_seed(0)
    module = OODSegmenter(TinySegmenter(num_classes=5, width=8), num_classes=5, ood_score=score).eval()
    module.temperature.fill_(1.6)
    return module


def _reference(module: OODSegmenter, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # What the module itself computes, through its own public methods.
    with torch.no_grad():
        scaled = module(x)
        return scaled, scaled.argmax(1), module.score(scaled)


def test_graph_equals_the_module_and_folds_the_temperature() -> None:
    module = _per_pixel("msp")
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        got = DeployableSegmenter(module)(x)
    for g, r in zip(got, _reference(module, x)):
        torch.testing.assert_close(g, r, rtol=0, atol=0)
    module.temperature.fill_(1.0)
    with torch.no_grad():
        assert not torch.allclose(DeployableSegmenter(module)(x)[0], got[0])


def test_uint8_input_is_normalised_inside_the_graph() -> None:
    from synthrel_lightning.data.transforms import normalize_images

    module = _per_pixel()
    raw = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        got = DeployableSegmenter(module, input_format="uint8")(raw.float())
    ref = _reference(module, normalize_images(raw))
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_per_pixel_export_matches_pytorch(tmp_path: Path, fmt: str) -> None:
    module = _per_pixel("energy")
    path = tmp_path / ("m.onnx" if fmt == "onnx" else "m.pt")
    report = export_segmenter(module, path, format=fmt, input_size=(32, 64), dynamic_size=True)
    assert path.is_file() and report.checked_sizes == [(32, 64), (64, 128)]
    assert report.max_abs_diff["class_scores"] < 1e-4 and report.max_abs_diff["ood_score"] < 1e-4
    assert report.max_abs_diff["prediction_mismatch"] == 0.0
    x = torch.randn(3, 3, 48, 80)  # a third size, run independently of the exporter's own check
    ref = _reference(module, x)
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [o.name for o in session.get_outputs()] == ["class_scores", "prediction", "ood_score"]
        out = session.run(None, {"image": x.numpy()})
    else:
        with torch.no_grad():
            out = [t.numpy() for t in torch.jit.load(str(path))(x)]
    np.testing.assert_allclose(out[0], ref[0].numpy(), atol=1e-4)
    np.testing.assert_array_equal(out[1], ref[1].numpy())
    np.testing.assert_allclose(out[2], ref[2].numpy(), atol=1e-4)


@pytest.mark.parametrize("fmt", ["onnx", pytest.param("torchscript", marks=pytest.mark.slow)])
def test_mask_classification_export_matches_pytorch(tmp_path: Path, fmt: str) -> None:
    torch.manual_seed(0)
    seg = HFMask2Former(checkpoint=None, num_classes=4, config=MASK2FORMER)
    module = OODSegmenter(seg, num_classes=4, ood_score="rba").eval()
    module.temperature.fill_(2.0)
    path = tmp_path / ("m2f.onnx" if fmt == "onnx" else "m2f.pt")
    report = export_segmenter(module, path, format=fmt, input_size=(64, 96))
    assert report.max_abs_diff["class_scores"] < 1e-4 and report.max_abs_diff["ood_score"] < 1e-4


def test_a_graph_that_does_not_generalise_is_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    seg = HFMask2Former(checkpoint=None, num_classes=4, config=MASK2FORMER)
    module = OODSegmenter(seg, num_classes=4, ood_score="rba").eval()
    path = tmp_path / "m2f.onnx"
    with pytest.raises(ExportError, match="does not generalise"):
        export_segmenter(module, path, format="onnx", input_size=(64, 96), dynamic_size=True, atol=1e-4)
    assert not path.exists()


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="format must be one of"):
        export_segmenter(_per_pixel(), "x.onnx", format="tflite")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected an OODSegmenter"):
        DeployableSegmenter(TinySegmenter())


def test_export_model_command_from_a_fit_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    import lightning as L

    from synthrel_lightning.commands.export_model import main
    from synthrel_lightning.hub import from_pretrained
    from synthrel_lightning.module_spec import build_module

    spec = {
        "class_path": "synthrel_lightning.models.OODSegmenter",
        "init_args": {
            "segmenter": {"class_path": "synthrel_lightning.models.TinySegmenter", "init_args": {"num_classes": 5}},
            "num_classes": 5,
            "ood_score": "entropy",
        },
    }
    module = build_module(spec)
    module.temperature.fill_(0.8)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(module)
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    out = tmp_path / "model.onnx"
    result = main(["--source", str(ckpt), "--output", str(out), "--input_size", "[32,64]", "--input_format", "uint8"])
    assert json.loads(capsys.readouterr().out)["path"] == str(out)
    assert result["input_format"] == "uint8" and result["max_abs_diff"]["class_scores"] < 1e-4
    folder = tmp_path / "pretrained"
    main(["--source", str(ckpt), "--output", str(folder), "--format", "pretrained"])
    loaded = from_pretrained(folder)
    assert float(loaded.temperature) == pytest.approx(0.8) and loaded.ood_score == "entropy"
