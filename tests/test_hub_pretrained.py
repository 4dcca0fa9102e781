"""save_pretrained / from_pretrained / push_to_hub of the OOD segmenter, and its model card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from synthrel_lightning.hub import PretrainedError, from_pretrained, model_spec_of, push_to_hub
from synthrel_lightning.hub import pretrained as pretrained_module
from synthrel_lightning.models import OODSegmenter, TinySegmenter
from synthrel_lightning.module_spec import build_module

SPEC = {
    "class_path": "synthrel_lightning.models.OODSegmenter",
    "init_args": {
        "segmenter": {
            "class_path": "synthrel_lightning.models.TinySegmenter",
            "init_args": {"num_classes": 5, "width": 8},
        },
        "num_classes": 5,
        "ood_score": "max_logit",
    },
}


def _trained_like(module: OODSegmenter) -> OODSegmenter:
    torch.manual_seed(3)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        module.temperature.fill_(1.37)
    return module.eval()


def test_round_trip_of_a_module_built_from_a_spec(tmp_path: Path) -> None:
    module = _trained_like(build_module(SPEC))
    folder = module.save_pretrained(tmp_path / "model", metrics={"val/road_anomaly/ap": 0.25})
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.yaml", "model.safetensors"]
    loaded = OODSegmenter.from_pretrained(folder)
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), module(x), rtol=0, atol=0)
        torch.testing.assert_close(loaded.score(loaded(x)), module.score(module(x)), rtol=0, atol=0)
    assert float(loaded.temperature) == pytest.approx(1.37)
    assert loaded.ood_score == "max_logit"
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["model"]["init_args"]["segmenter"]["init_args"]["width"] == 8


def test_model_card_states_segmenter_recipe_and_metrics(tmp_path: Path) -> None:
    module = _trained_like(build_module(SPEC))
    recipe = {"trainer": {"max_epochs": 3}, "model": SPEC}
    folder = module.save_pretrained(tmp_path / "m", recipe=recipe, metrics={"val/demo_objects/auroc": 0.875})
    card = (folder / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    assert header["library_name"] == "synthrel-lightning"
    assert "synthrel_lightning.models.TinySegmenter" in card
    assert "| val/demo_objects | auroc | 0.8750 |" in card
    assert "max_epochs: 3" in card
    assert "temperature: 1.3700" in card


def test_python_built_module_needs_a_spec(tmp_path: Path) -> None:
    module = OODSegmenter(TinySegmenter(num_classes=5, width=8), num_classes=5)
    with pytest.raises(PretrainedError, match="model_spec"):
        model_spec_of(module)
    folder = module.save_pretrained(tmp_path / "m", model_spec=SPEC)
    loaded = from_pretrained(folder)
    torch.testing.assert_close(loaded.state_dict()["segmenter.head.weight"], module.segmenter.head.weight)


def test_mismatching_weights_and_bad_sources_are_named(tmp_path: Path) -> None:
    module = _trained_like(build_module(SPEC))
    folder = module.save_pretrained(tmp_path / "m")
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["model"]["init_args"]["segmenter"]["init_args"]["width"] = 16
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(PretrainedError, match="model.safetensors"):
        from_pretrained(folder)
    with pytest.raises(PretrainedError, match="neither a folder"):
        from_pretrained(tmp_path / "not-there")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PretrainedError, match="config.yaml is missing"):
        from_pretrained(tmp_path / "empty")


def test_push_to_hub_uploads_the_saved_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The network call itself is huggingface_hub's; the test checks what reaches it.
    seen: dict[str, object] = {}

    def fake_upload(folder: Path, repo_id: str, private: object, token: object, commit_message: str) -> str:
        seen["files"] = sorted(p.name for p in Path(folder).iterdir())
        seen["card"] = (Path(folder) / "README.md").read_text()
        seen["repo"] = repo_id
        return "https://huggingface.co/x/y/commit/1"

    monkeypatch.setattr(pretrained_module, "upload_folder", fake_upload)
    module = _trained_like(build_module(SPEC))
    url = push_to_hub(module, "lab/tiny-ood", metrics={"test/ra/fpr95": 0.5})
    assert url.endswith("/commit/1")
    assert seen["files"] == ["README.md", "config.yaml", "model.safetensors"]
    assert seen["repo"] == "lab/tiny-ood" and "# tiny-ood" in str(seen["card"])
    json.dumps(seen)  # plain data only
