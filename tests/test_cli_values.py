"""Values typed on the command line reach the classes as typed: ``null`` is None, two classes deep too."""

from __future__ import annotations

import lightning as L
import pytest

from synthrel_lightning.cli import DEMO_CONFIG
from synthrel_lightning.trainer_cli import SynthrelCLI

TINY_SEGFORMER = {"hidden_sizes": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "decoder_hidden_size": 32}


def _cli(args: list[str]) -> SynthrelCLI:
    return SynthrelCLI(
        model_class=L.LightningModule,
        datamodule_class=L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        save_config_callback=None,
        args=["--config", str(DEMO_CONFIG), *args],
    )


def test_null_two_classes_deep_reaches_the_segmenter_as_none() -> None:
    """``--model.init_args.segmenter.init_args.encoder_weights=null`` over a recipe's ``imagenet``."""
    seg = "--model.init_args.segmenter"
    cli = _cli(
        [
            f"{seg}=synthrel_lightning.models.SMPSegmenter",
            f"{seg}.init_args.arch=FPN",
            f"{seg}.init_args.encoder_name=resnet18",
            f"{seg}.init_args.encoder_weights=imagenet",
            f"{seg}.init_args.encoder_weights=null",
        ]
    )
    assert cli.config.model.init_args.segmenter.init_args.encoder_weights is None
    # Built offline with random weights: nothing was downloaded.
    assert type(cli.model.segmenter).__name__ == "SMPSegmenter"


def test_only_options_given_as_null_are_restored() -> None:
    from jsonargparse import Namespace

    from synthrel_lightning.trainer_cli import restore_nulls

    key = "model.init_args.segmenter.init_args"
    config = Namespace({f"{key}.a": "None", f"{key}.b": "None", f"{key}.c": "None", "model.init_args.d": "None"})
    restore_nulls(config, [f"--{key}.a=null", f"--{key}.b", "~", f"--{key}.c=text", "--model.init_args.d=null"])
    assert config[f"{key}.a"] is None and config[f"{key}.b"] is None
    # Typed as something else, or one class deep (parsed correctly): left as parsed.
    assert config[f"{key}.c"] == "None" and config["model.init_args.d"] == "None"


def test_segformer_from_a_config_downloads_nothing(monkeypatch) -> None:
    import transformers

    from synthrel_lightning.models import HFSegformer

    def offline(*args, **kwargs):
        raise AssertionError(f"from_pretrained called with {args}")

    monkeypatch.setattr(transformers.SegformerForSemanticSegmentation, "from_pretrained", offline)
    model = HFSegformer(config=TINY_SEGFORMER)
    assert model.model.config.hidden_sizes == [8, 16, 32, 64]
    with pytest.raises(AssertionError, match="segformer-b0"):
        HFSegformer()  # neither: the default checkpoint loads
