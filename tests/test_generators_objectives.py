"""The ControlNet training objective, pinned to an independent transcription of diffusers' train_controlnet.py.

Reference: huggingface/diffusers, ``examples/controlnet/train_controlnet.py`` (the training loop):
latents = VAE posterior sample x scaling_factor; noise ~ N(0, I); timesteps ~ U{0, ..., T-1};
noisy = add_noise(latents, noise, t) = sqrt(abar_t) latents + sqrt(1 - abar_t) noise; the ControlNet
residuals feed the UNet; target = noise (epsilon) or get_velocity = sqrt(abar_t) noise - sqrt(1 - abar_t)
latents (v-prediction); loss = MSE(model_pred.float(), target.float(), mean). The scheduler
formulas are written out here rather than called, so a wrong target, timestep or noising in the
module cannot pass by agreeing with itself.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from synthrel_lightning.generators.controlnet_module import ControlNetFineTuning
from synthrel_lightning.testing import build_tiny_components

TINY = {"conditioning_embedding_out_channels": (16, 32)}  # the tiny VAE downsamples by 2, not 8


@pytest.fixture(scope="module")
def module() -> ControlNetFineTuning:
    torch.manual_seed(0)
    m = ControlNetFineTuning(base_model=build_tiny_components(0, unet_in_channels=4), **TINY)
    return m.eval()


def _batch() -> dict:
    g = torch.Generator().manual_seed(7)
    return {
        "pixel_values": torch.rand(2, 3, 32, 32, generator=g) * 2 - 1,
        "conditioning": torch.rand(2, 1, 32, 32, generator=g),
        "caption": ["a street with a car", "a road at night"],
    }


def _reference_loss(m: ControlNetFineTuning, batch: dict, seed: int, prediction_type: str) -> torch.Tensor:
    """diffusers' train_controlnet.py step on the same random draws (the module's draw order: eps, noise, t)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        posterior = m.vae.encode(batch["pixel_values"]).latent_dist
        eps = torch.randn(posterior.mean.shape, generator=g)
        latents = (posterior.mean + posterior.std * eps) * m.vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=g)
        steps = m.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (latents.shape[0],), generator=g).long()
        # DDPM forward process, written out: abar_t = prod_{s<=t} (1 - beta_s), betas from the config.
        cfg = m.noise_scheduler.config
        assert cfg.beta_schedule == "scaled_linear"
        betas = torch.linspace(cfg.beta_start**0.5, cfg.beta_end**0.5, steps, dtype=torch.float32) ** 2
        abar = torch.cumprod(1.0 - betas, dim=0)[timesteps].view(-1, 1, 1, 1)
        noisy = abar.sqrt() * latents + (1 - abar).sqrt() * noise
        ids = m.tokenizer(
            batch["caption"], padding="max_length", max_length=m.tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        ).input_ids  # fmt: skip
        text = m.text_encoder(ids)[0]
        down, mid = m.controlnet(
            noisy, timesteps, encoder_hidden_states=text, controlnet_cond=batch["conditioning"], return_dict=False
        )
        pred = m.unet(
            noisy, timesteps, encoder_hidden_states=text, down_block_additional_residuals=list(down),
            mid_block_additional_residual=mid,
        ).sample  # fmt: skip
    if prediction_type == "epsilon":
        target = noise
    else:
        target = abar.sqrt() * noise - (1 - abar).sqrt() * latents
    return F.mse_loss(pred.float(), target.float(), reduction="mean")


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_denoising_loss_is_diffusers_controlnet_objective(module, prediction_type: str) -> None:
    from diffusers import DDPMScheduler

    module.noise_scheduler = DDPMScheduler.from_config(module.noise_scheduler.config, prediction_type=prediction_type)
    batch = _batch()
    with torch.no_grad():
        ours = module.denoising_loss(batch, torch.Generator().manual_seed(123))
    reference = _reference_loss(module, batch, 123, prediction_type)
    assert torch.isfinite(reference) and reference > 0
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5, abs=1e-7)
    # The test tells targets apart: the other prediction type gives another loss on the same draws.
    other = _reference_loss(module, batch, 123, "epsilon" if prediction_type != "epsilon" else "v_prediction")
    assert abs(other.item() - reference.item()) > 1e-4 * reference.item()


def _make_it_look(blip: torch.nn.Module) -> None:
    """Redraw the tiny BLIP's vision and cross-attention weights larger, so its captions depend on the image.

    At BLIP's initialisation scale the tiny vision tower's features are nearly constant (every frame
    gets the same caption), and a test of which caption goes to which frame could not fail.
    """
    g = torch.Generator().manual_seed(0)
    cross = [(n, p) for n, p in blip.text_decoder.named_parameters() if "crossattention" in n]
    with torch.no_grad():
        for name, param in [*blip.vision_model.named_parameters(), *cross]:
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=g) * 0.3)
            elif "norm" in name.lower() and name.endswith("weight"):
                param.fill_(1.0)


def test_each_frame_gets_its_own_caption(tmp_path, tmp_path_factory) -> None:
    """Captioned in batches (and resumed), frame i's record holds the caption of frame i's image alone."""
    import json

    import numpy as np
    from PIL import Image
    from test_generators_captions import save_tiny_blip

    from synthrel_lightning.data.demo import write_demo_cityscapes
    from synthrel_lightning.generators.captions import Captioner, caption_split

    root = write_demo_cityscapes(tmp_path / "cs", num_train=5, num_val=1, size=(64, 128))
    captioner = Captioner(str(save_tiny_blip(tmp_path / "captioner")), max_new_tokens=8)
    captioner.configure_model()
    _make_it_look(captioner.captioner)
    out = tmp_path / "train.jsonl"
    kwargs = dict(split="train", batch_size=3, accelerator="cpu", devices=1, progress=False)
    caption_split(str(root), str(out), captioner=captioner, limit_predict_batches=1, **kwargs)
    caption_split(str(root), str(out), captioner=captioner, **kwargs)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 5
    expected = {}
    for record in records:
        image = np.asarray(Image.open(root / record["image"]).convert("RGB"))
        expected[record["image"]] = captioner.caption([image])[0]  # this frame alone, in a batch of one
    # The check can fail: the tiny captioner tells at least some frames apart.
    assert len(set(expected.values())) >= 2, expected
    assert {r["image"]: r["text"] for r in records} == expected
