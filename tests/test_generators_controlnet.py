"""ControlNet fine-tuning: the training pairs, the LightningModule (loss, checkpoints, EMA, LoRA, optimisers) and
the recipe run through ``python -m synthrel_lightning fit`` on the demo scenes with a tiny random SD."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from synthrel_lightning.cli import main as cli_main
from synthrel_lightning.data.demo import write_demo_cityscapes
from synthrel_lightning.generators.captions import CaptionError
from synthrel_lightning.generators.controlnet_data import ControlNetDataModule, ControlNetPairs
from synthrel_lightning.generators.controlnet_module import ControlNetFineTuning
from synthrel_lightning.generators.domains import DomainShiftGenerator
from synthrel_lightning.generators.encodings import ENCODING_FILE, ENCODINGS, EncodingError
from synthrel_lightning.testing import build_tiny_components, save_tiny_pipeline

REPO = Path(__file__).resolve().parents[1]
TINY = {"conditioning_embedding_out_channels": (16, 32)}  # the tiny VAE downsamples by 2, not 8

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_cityscapes(tmp_path_factory.mktemp("demo") / "cs", num_train=4, num_val=2, size=(64, 128))


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "sd", kind="controlnet")


def quiet_trainer(**kwargs) -> L.Trainer:
    base = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False)  # fmt: skip
    return L.Trainer(**{**base, **kwargs})


def test_pairs_are_genval_square_crops_with_nearest_labels(demo_root: Path, tmp_path: Path) -> None:
    pairs = ControlNetPairs(demo_root, "train", None, "label_ids_1ch", resolution=32, seed=3)
    item = pairs[1]
    assert item["pixel_values"].shape == (3, 32, 32) and item["conditioning"].shape == (1, 32, 32)
    assert -1.0 <= float(item["pixel_values"].min()) and float(item["pixel_values"].max()) <= 1.0
    ids = item["label_ids"].numpy().astype(np.uint8)
    assert torch.equal(item["conditioning"], ENCODINGS["label_ids_1ch"].encode_tensor(ids))
    # A square of side min(H, W) = 64 at some offset, resized with NEAREST (GenVal's crop).
    frame = pairs.frames[1]
    src = np.asarray(Image.open(frame.label))
    matches = [
        x for x in range(src.shape[1] - 64 + 1)
        if np.array_equal(np.asarray(Image.fromarray(src[:, x : x + 64]).resize((32, 32), Image.NEAREST)), ids)
    ]  # fmt: skip
    assert matches
    # Same (seed, epoch, index) -> same crop; epochs move it.
    assert torch.equal(
        ControlNetPairs(demo_root, "train", None, resolution=32, seed=3)[1]["label_ids"], item["label_ids"]
    )
    crops = set()
    for epoch in range(6):
        pairs.set_epoch(epoch)
        crops.add(pairs[1]["label_ids"].numpy().tobytes())
    assert len(crops) > 1
    # Captions come from the JSONL file, matched by name; a frame missing from it is an error.
    names = [f.name for f in pairs.frames]
    captions = tmp_path / "train.jsonl"
    captions.write_text(
        "".join(json.dumps({"image": f"t/{n}_leftImg8bit.png", "conditioning_image": "", "text": f"c{i}"}) + "\n"
                for i, n in enumerate(names[:-1]))
    )  # fmt: skip
    with pytest.raises(CaptionError, match=rf"no caption for 1 of 4 frames \(first: {names[-1]}\)"):
        ControlNetPairs(demo_root, "train", captions, resolution=32)
    ok = ControlNetPairs(demo_root, "train", captions, resolution=32, on_missing_caption="generic", generic_caption="g")
    assert [ok[i]["caption"] for i in range(4)] == ["c0", "c1", "c2", "g"]


def test_module_checkpoints_hold_only_trained_weights_and_data_encoding_must_match(demo_root: Path) -> None:
    module = ControlNetFineTuning(base_model=build_tiny_components(0, unet_in_channels=4), **TINY)
    assert module.controlnet.config.conditioning_channels == 1  # label_ids_1ch
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    assert ckpt["state_dict"] and all(k.startswith("controlnet.") for k in ckpt["state_dict"])
    module.on_load_checkpoint(ckpt)
    ckpt["state_dict"].pop(next(iter(ckpt["state_dict"])))
    with pytest.raises(KeyError, match="lacks 1 ControlNet weights"):
        module.on_load_checkpoint(ckpt)
    dm = ControlNetDataModule(root=str(demo_root), encoding="cityscapes_palette", resolution=32, batch_size=2,
                              num_workers=0)  # fmt: skip
    with pytest.raises(
        EncodingError, match="model conditions on encoding 'label_ids_1ch' but the data .* 'cityscapes_palette'"
    ):
        quiet_trainer(fast_dev_run=1).fit(module, datamodule=dm)


def test_8bit_adam_needs_bitsandbytes() -> None:
    pytest.importorskip("torch")
    try:
        import bitsandbytes  # noqa: F401

        pytest.skip("bitsandbytes is installed")
    except ImportError:
        pass
    module = ControlNetFineTuning(
        base_model=build_tiny_components(0, unet_in_channels=4), optimizer="adamw_8bit", **TINY
    )
    with pytest.raises(ImportError, match="'adamw_8bit' needs bitsandbytes"):
        module.configure_optimizers()
    fused = ControlNetFineTuning(
        base_model=build_tiny_components(0, unet_in_channels=4), optimizer="adamw_fused", **TINY
    )
    opt = fused.configure_optimizers()["optimizer"]
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"]


def test_ema_and_unet_lora_train_save_and_render(demo_root: Path, tiny_sd: Path, tmp_path: Path) -> None:
    pytest.importorskip("peft")
    module = ControlNetFineTuning(
        base_model=str(tiny_sd), learning_rate=1e-2, ema_decay=0.5, unet_lora_rank=4,
        gradient_checkpointing=True, save_dir=str(tmp_path / "cn"), **TINY,
    )  # fmt: skip
    lora0 = {n: p.detach().clone() for n, p in module.unet.named_parameters() if "lora_" in n}
    assert lora0
    dm = ControlNetDataModule(root=str(demo_root), resolution=32, batch_size=2, num_workers=0, max_val_samples=1)
    quiet_trainer(max_steps=3, limit_val_batches=0).fit(module, datamodule=dm)
    lora = dict(module.unet.named_parameters())
    assert any(not torch.equal(lora[n], v) for n, v in lora0.items())  # the adapters trained
    shadow = module.ema.shadow_params
    raw = list(module.controlnet.parameters())
    assert any(not torch.equal(s, r) for s, r in zip(shadow, raw))
    # Saved at the end of fitting: the EMA weights, the encoding file, the UNet LoRA.
    saved = tmp_path / "cn"
    assert (saved / ENCODING_FILE).is_file() and list((saved / "unet_lora").glob("*.safetensors"))
    from diffusers import ControlNetModel

    reloaded = ControlNetModel.from_pretrained(str(saved))
    assert all(torch.equal(a, b) for a, b in zip(reloaded.parameters(), shadow))
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    assert any("lora_" in k for k in ckpt["state_dict"]) and "controlnet_ema" in ckpt
    # The generator loads the ControlNet (encoding from its file) and the UNet LoRA.
    gen = DomainShiftGenerator(
        str(tiny_sd), str(saved), unet_lora=str(saved / "unet_lora"), domains=["fog"], num_inference_steps=1,
        device="cpu", dtype="float32",
    )  # fmt: skip
    (s,) = gen.generate([np.full((16, 16), 7, np.uint8)], ["fog"], [0], ids="label_ids")
    assert s.image.shape == (16, 16, 3) and gen.encoding.name == "label_ids_1ch"
    assert any("lora" in n for n, _ in gen.pipeline.unet.named_parameters())


@pytest.mark.slow
def test_fit_recipe_lowers_loss_saves_resumes_and_renders(demo_root: Path, tiny_sd: Path, tmp_path: Path) -> None:
    save_dir = tmp_path / "controlnet"
    override = {
        "model": {"init_args": {
            "base_model": str(tiny_sd), "conditioning_embedding_out_channels": [16, 32], "learning_rate": 3.0e-3,
            "save_dir": str(save_dir),
        }},
        "data": {"init_args": {
            "root": str(demo_root), "train_captions": None, "val_captions": None, "resolution": 32, "batch_size": 2,
            "num_workers": 0, "max_train_samples": 2, "val_split": "train", "max_val_samples": 2,
        }},
        "trainer": {
            "default_root_dir": str(tmp_path / "run"), "accelerator": "cpu", "devices": 1, "precision": "32",
            "accumulate_grad_batches": 1, "max_steps": 10, "limit_val_batches": 0, "logger": False,
            "enable_progress_bar": False,
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                 "init_args": {"dirpath": str(tmp_path / "ckpt"), "every_n_train_steps": 5, "save_last": True}},
                {"class_path": "synthrel_lightning.generators.ControlNetSampleLogger",
                 "init_args": {"every_n_steps": 5, "domains": ["fog", "night"], "num_frames": 1,
                               "num_inference_steps": 2}},
            ],
        },
    }  # fmt: skip
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(override))
    cli_main(["fit", "--config", str(REPO / "recipes/controlnet_cityscapes.yaml"), "--config", str(cfg)])

    # Saved for the generator: save_pretrained + encoding file; a checkpoint of the trained weights only.
    assert json.loads((save_dir / ENCODING_FILE).read_text())["encoding"] == "label_ids_1ch"
    from synthrel_lightning.checkpoints import load_checkpoint

    last = tmp_path / "ckpt" / "last.ckpt"
    state = load_checkpoint(last)["state_dict"]
    assert state and all(k.startswith("controlnet.") for k in state)
    # Sample renders: label map | fog | night, one row.
    (png,) = sorted((tmp_path / "run" / "controlnet_samples").glob("step_*.png"))[-1:]
    assert np.asarray(Image.open(png)).shape == (32, 96, 3)

    # The trained ControlNet lowers the denoising loss against a fresh one (fixed validation noise).
    dm = ControlNetDataModule(root=str(demo_root), val_split="train", max_val_samples=2, resolution=32,
                              batch_size=2, num_workers=0)  # fmt: skip
    fresh = ControlNetFineTuning(base_model=str(tiny_sd), **TINY)
    trained = ControlNetFineTuning(base_model=str(tiny_sd), controlnet=str(save_dir), **TINY)
    before = quiet_trainer().validate(fresh, datamodule=dm, verbose=False)[0]["val/loss"]
    after = quiet_trainer().validate(trained, datamodule=dm, verbose=False)[0]["val/loss"]
    assert after < before

    # Resume from the checkpoint for two more steps.
    cli_main(["fit", "--config", str(REPO / "recipes/controlnet_cityscapes.yaml"), "--config", str(cfg),
              "--trainer.max_steps", "12", "--ckpt_path", str(last)])  # fmt: skip
    assert load_checkpoint(last)["global_step"] == 12

    # The domain generator loads it directly (encoding from its file) and renders.
    gen = DomainShiftGenerator(str(tiny_sd), str(save_dir), domains=["fog"], num_inference_steps=2, device="cpu",
                               dtype="float32")  # fmt: skip
    ids = np.full((32, 48), 7, np.uint8)
    ids[:10] = 23
    (s,) = gen.generate([ids], ["fog"], [0], ids="label_ids")
    assert gen.encoding.name == "label_ids_1ch" and s.image.shape == (32, 48, 3)


def to_ldm(controlnet, layers_per_block: int = 2) -> dict[str, torch.Tensor]:
    """A diffusers ControlNet's weights under lllyasviel ControlNet's (LDM) names, ``control_model.`` prefixed."""
    fixed = {
        "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0",
        "controlnet_cond_embedding.conv_in": "input_hint_block.0",
        "controlnet_cond_embedding.conv_out": "input_hint_block.14", "controlnet_mid_block": "middle_block_out.0",
    }  # fmt: skip
    resnet = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
              ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]  # fmt: skip

    def rename(rest: str) -> str:
        for a, b in resnet:
            rest = rest.replace(a, b)
        return rest

    out = {}
    for key, value in controlnet.state_dict().items():
        name, leaf = key.rsplit(".", 1)
        p = key.split(".")
        if name in fixed:
            new = f"{fixed[name]}.{leaf}"
        elif p[0] == "controlnet_down_blocks":
            new = f"zero_convs.{p[1]}.0.{leaf}"
        elif p[:2] == ["controlnet_cond_embedding", "blocks"]:
            new = f"input_hint_block.{2 * (int(p[2]) + 1)}.{leaf}"
        elif p[0] == "down_blocks":
            block, kind, layer, rest = int(p[1]), p[2], int(p[3]), ".".join(p[4:])
            i = 1 + block * (layers_per_block + 1) + layer
            if kind == "resnets":
                new = f"input_blocks.{i}.0.{rename(rest)}"
            elif kind == "attentions":
                new = f"input_blocks.{i}.1.{rest}"
            else:
                new = f"input_blocks.{1 + block * (layers_per_block + 1) + layers_per_block}.0.op.{leaf}"
        elif p[0] == "mid_block":
            rest = ".".join(p[3:])
            new = f"middle_block.{2 * int(p[2])}.{rename(rest)}" if p[1] == "resnets" else f"middle_block.1.{rest}"
        else:
            raise KeyError(key)
        out[f"control_model.{new}"] = value
    return out


def test_import_controlnet_converts_an_original_format_checkpoint(tmp_path: Path, capsys) -> None:
    from diffusers import ControlNetModel

    unet = build_tiny_components(0, unet_in_channels=4)["unet"]
    original = ControlNetModel.from_unet(unet, conditioning_channels=1).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for p in original.parameters():
            p.normal_(std=0.05)
    net = {"image_size": 32, "in_channels": 4, "model_channels": 32, "attention_resolutions": [2], "num_res_blocks": 2,
           "channel_mult": [1, 2], "num_heads": 8, "use_spatial_transformer": True, "transformer_depth": 1,
           "context_dim": 32, "use_linear_in_transformer": False}  # fmt: skip
    config = {"model": {"params": {
        "control_stage_config": {"params": {**net, "hint_channels": 3}},  # as in cldm_v15.yaml; overridden below
        "unet_config": {"params": {**net, "out_channels": 4}},
        "first_stage_config": {"params": {"ddconfig": {"ch_mult": [1, 2]}}},
    }}}  # fmt: skip
    (tmp_path / "cldm.yaml").write_text(yaml.safe_dump(config))
    # A Lightning checkpoint of the whole cldm model: other weights beside control_model.*.
    ckpt = tmp_path / "genval.ckpt"
    torch.save({"state_dict": {**to_ldm(original), "model.diffusion_model.x": torch.zeros(1)}}, ckpt)
    out = tmp_path / "imported"
    cli_main(["import_controlnet", "--checkpoint", str(ckpt), "--original_config", str(tmp_path / "cldm.yaml"),
              "--conditioning_channels", "1", "--encoding", "label_ids_1ch", "--out", str(out)])  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert summary == {"out": str(out), "encoding": "label_ids_1ch", "conditioning_channels": 1}
    assert json.loads((out / ENCODING_FILE).read_text())["encoding"] == "label_ids_1ch"
    imported = ControlNetModel.from_pretrained(str(out))
    a, b = original.state_dict(), imported.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    # Same function, not only the same tensors.
    x, t, text = torch.randn(1, 4, 16, 16), torch.tensor([10]), torch.randn(1, 5, 32)
    cond = torch.rand(1, 1, 128, 128)
    with torch.no_grad():
        ra = original(x, t, encoder_hidden_states=text, controlnet_cond=cond, return_dict=False)
        rb = imported(x, t, encoder_hidden_states=text, controlnet_cond=cond, return_dict=False)
    assert all(torch.allclose(u, v, atol=1e-6) for u, v in zip([*ra[0], ra[1]], [*rb[0], rb[1]]))
    # The encoding must fit the checkpoint's hint channels.
    with pytest.raises(EncodingError, match="conditioning_channels=1 but encoding 'ade20k_palette' has 3"):
        from synthrel_lightning.generators.controlnet_import import import_controlnet

        import_controlnet(str(ckpt), str(tmp_path / "x"), str(tmp_path / "cldm.yaml"), "ade20k_palette", 1)
    assert not (tmp_path / "x").exists()


def test_import_controlnet_refuses_bad_inputs(tmp_path: Path, capsys) -> None:
    from synthrel_lightning.generators.controlnet_import import import_controlnet

    config = tmp_path / "cldm.yaml"
    config.write_text(yaml.safe_dump({"model": {"params": {"unet_config": {}}}}))
    with pytest.raises(FileNotFoundError, match="checkpoint .*missing.ckpt does not exist"):
        import_controlnet(str(tmp_path / "missing.ckpt"), str(tmp_path / "out"), str(config))
    ckpt = tmp_path / "sd.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}}, ckpt)
    with pytest.raises(ValueError, match="is not a ControlNet \\(cldm\\) config"):
        import_controlnet(str(ckpt), str(tmp_path / "out"), str(config))
    config.write_text(yaml.safe_dump({"model": {"params": {"control_stage_config": {"params": {"hint_channels": 3}}}}}))
    with pytest.raises(ValueError, match="holds no 'control_model.\\*' weights"):
        import_controlnet(str(ckpt), str(tmp_path / "out"), str(config), conditioning_channels=1)
    with pytest.raises(SystemExit, match="unknown conditioning encoding"):  # error: import_controlnet: ..., status 2
        cli_main(["import_controlnet", "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"),
                  "--original_config", str(config), "--encoding", "rgb"])  # fmt: skip
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()


def test_frozen_parts_stay_frozen_and_in_eval_mode() -> None:
    module = ControlNetFineTuning(base_model=build_tiny_components(0, unet_in_channels=4), **TINY)
    module.train()
    assert module.controlnet.training and not (
        module.unet.training or module.vae.training or module.text_encoder.training
    )
    trained = {id(p) for p in module.trainable_parameters()}
    assert trained == {id(p) for p in module.controlnet.parameters()}
    assert not any(
        p.requires_grad for part in (module.unet, module.vae, module.text_encoder) for p in part.parameters()
    )


def test_sample_renders_reach_the_tensorboard_logger(demo_root: Path, tmp_path: Path) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from synthrel_lightning.generators.samples import ControlNetSampleLogger

    module = ControlNetFineTuning(base_model=build_tiny_components(0, unet_in_channels=4), **TINY)
    dm = ControlNetDataModule(root=str(demo_root), resolution=32, batch_size=2, num_workers=0, max_val_samples=2)
    samples = ControlNetSampleLogger(every_n_steps=1, domains=["fog", "snow"], num_frames=2, num_inference_steps=1)
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    quiet_trainer(max_steps=1, limit_val_batches=0, logger=logger, callbacks=[samples]).fit(module, datamodule=dm)
    (png,) = samples.saved
    assert np.asarray(Image.open(png)).shape == (64, 96, 3)  # two frames x (label map | fog | snow)
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    assert "controlnet/samples" in events.Tags()["images"]
    assert module.controlnet.training  # back in training mode after rendering


def test_bf16_mixed_keeps_frozen_parts_in_bf16_and_the_controlnet_in_fp32(demo_root: Path) -> None:
    module = ControlNetFineTuning(base_model=build_tiny_components(0, unet_in_channels=4), **TINY)
    dm = ControlNetDataModule(root=str(demo_root), resolution=32, batch_size=2, num_workers=0, max_val_samples=1)
    before = [p.detach().clone() for p in module.controlnet.parameters()]
    trainer = quiet_trainer(max_steps=2, limit_val_batches=0, precision="bf16-mixed")
    trainer.fit(module, datamodule=dm)
    assert module.unet.dtype == module.vae.dtype == module.text_encoder.dtype == torch.bfloat16
    assert module.controlnet.dtype == torch.float32
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, module.controlnet.parameters()))
