"""ControlNet fine-tuning on in-domain label maps as a LightningModule (Stable Diffusion stays frozen).

ControlNet (Zhang et al., "Adding Conditional Control to Text-to-Image Diffusion Models",
ICCV 2023) initialised from the SD 1.5 UNet (``ControlNetModel.from_unet``) and trained with
the DDPM noise-prediction loss: ``|| eps - eps_theta(z_t, t, text, c) ||^2`` on VAE latents of
the frame, conditioned on the encoded label map ``c`` and the frame's caption. GenVal
(github.com/valeoai/GenVal, ``ControlNet/train.py``) trains it on Cityscapes with SD locked,
lr 1e-5, batch 8 x 16 accumulation; those are the recipe's defaults
(``recipes/controlnet_cityscapes.yaml``). Practice from diffusers'
``examples/controlnet/train_controlnet.py``: frozen parts in half precision, gradient
checkpointing, 8-bit or fused AdamW, constant learning rate with warm-up; plus optional EMA
of the ControlNet weights and LoRA adapters on the UNet (peft).

Checkpoints hold only the trained weights (ControlNet, LoRA, EMA), not the frozen model.
At the end of fitting (and on :meth:`save_controlnet`) the ControlNet is written with
``save_pretrained`` together with its encoding file, ready for
:class:`~synthrel_lightning.generators.domains.DomainShiftGenerator`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from synthrel_lightning.generators.encodings import EncodingError, get_encoding, write_encoding_file
from synthrel_lightning.seeding import numpy_generator, torch_generator

__all__ = ["ControlNetFineTuning"]

log = logging.getLogger(__name__)

Optimizer = Literal["adamw", "adamw_fused", "adamw_8bit"]
FrozenDType = Literal["auto", "float32", "float16", "bfloat16"]
_TRAINED_PREFIXES = ("controlnet.",)


def _load_components(base_model: str) -> dict[str, Any]:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from synthrel_lightning.synthesis.pipeline_loading import ModelLoadError

    try:
        return {
            "tokenizer": CLIPTokenizer.from_pretrained(base_model, subfolder="tokenizer"),
            "text_encoder": CLIPTextModel.from_pretrained(base_model, subfolder="text_encoder"),
            "vae": AutoencoderKL.from_pretrained(base_model, subfolder="vae"),
            "unet": UNet2DConditionModel.from_pretrained(base_model, subfolder="unet"),
            "noise_scheduler": DDPMScheduler.from_pretrained(base_model, subfolder="scheduler"),
        }
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"could not load Stable Diffusion {base_model!r}: expected a hub id or a local folder in the diffusers "
            f"layout (tokenizer/, text_encoder/, vae/, unet/, scheduler/) ({e})"
        ) from e


class ControlNetFineTuning(L.LightningModule):
    """Trains a ControlNet (and optionally UNet LoRA adapters) on (frame, encoded label map, caption) batches.

    ``base_model``: SD hub id / folder, or pre-built components ``{"unet", "vae", "text_encoder",
    "tokenizer", "scheduler" or "noise_scheduler"}``. ``controlnet``: start from this ControlNet
    (hub id / folder) instead of a copy of the UNet encoder. ``save_dir``: where the trained
    ControlNet (+ ``synthrel_encoding.json``, + ``unet_lora/``) is written when fitting ends.
    """

    def __init__(
        self,
        base_model: str | dict[str, Any] = "stable-diffusion-v1-5/stable-diffusion-v1-5",
        controlnet: str | None = None,
        encoding: str = "label_ids_1ch",
        conditioning_embedding_out_channels: tuple[int, ...] = (16, 32, 96, 256),
        learning_rate: float = 1e-5,
        lr_warmup_steps: int = 0,
        optimizer: Optimizer = "adamw",
        weight_decay: float = 1e-2,
        adam_betas: tuple[float, float] = (0.9, 0.999),
        adam_eps: float = 1e-8,
        gradient_checkpointing: bool = False,
        frozen_dtype: FrozenDType = "auto",
        ema_decay: float | None = None,
        unet_lora_rank: int | None = None,
        unet_lora_alpha: float | None = None,
        empty_prompt_probability: float = 0.0,
        save_dir: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["base_model"] if not isinstance(base_model, str) else None)
        self.encoding = get_encoding(encoding)
        if not 0.0 <= empty_prompt_probability <= 1.0:
            raise ValueError(f"empty_prompt_probability must be in [0, 1], got {empty_prompt_probability}")
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1) or None, got {ema_decay}")
        if optimizer not in ("adamw", "adamw_fused", "adamw_8bit"):
            raise ValueError(f"optimizer must be 'adamw', 'adamw_fused' or 'adamw_8bit', got {optimizer!r}")
        parts = _load_components(base_model) if isinstance(base_model, str) else dict(base_model)
        missing = {"unet", "vae", "text_encoder", "tokenizer"} - set(parts)
        if missing:
            raise ValueError(f"base_model components lack {sorted(missing)}")
        from diffusers import ControlNetModel, DDPMScheduler

        self.tokenizer = parts["tokenizer"]
        self.vae, self.text_encoder, self.unet = parts["vae"], parts["text_encoder"], parts["unet"]
        scheduler = parts.get("noise_scheduler") or parts.get("scheduler")
        if scheduler is None:
            raise ValueError("base_model components need a 'noise_scheduler' (or 'scheduler')")
        self.noise_scheduler = DDPMScheduler.from_config(scheduler.config)
        for frozen in (self.vae, self.text_encoder, self.unet):
            frozen.requires_grad_(False)
            frozen.eval()
        if controlnet is None:
            self.controlnet = ControlNetModel.from_unet(
                self.unet,
                conditioning_channels=self.encoding.channels,
                conditioning_embedding_out_channels=tuple(conditioning_embedding_out_channels),
            )
        else:
            from synthrel_lightning.generators.encodings import resolve_encoding

            self.controlnet = ControlNetModel.from_pretrained(controlnet)
            resolve_encoding(controlnet, self.controlnet.config.conditioning_channels, self.encoding.name)
        self.controlnet.train()
        if unet_lora_rank is not None:
            self._add_unet_lora(int(unet_lora_rank), unet_lora_alpha)
        if gradient_checkpointing:
            self.controlnet.enable_gradient_checkpointing()
            self.unet.enable_gradient_checkpointing()
        self.ema: Any = None
        if ema_decay is not None:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(self.controlnet.parameters(), decay=float(ema_decay))
        # Checkpoints hold only the trained weights; the frozen model comes from base_model.
        self.strict_loading = False

    # ------------------------------------------------------------------ parts
    def _add_unet_lora(self, rank: int, alpha: float | None) -> None:
        try:
            from peft import LoraConfig
        except ImportError as e:
            raise ImportError("unet_lora_rank needs peft: pip install peft") from e
        config = LoraConfig(
            r=rank,
            # peft annotates lora_alpha as int but only divides it by r: a float alpha is used as given
            lora_alpha=alpha if alpha is not None else rank,  # type: ignore[arg-type]
            init_lora_weights="gaussian",
            target_modules=["to_k", "to_q", "to_v", "to_out.0"],
        )
        self.unet.add_adapter(config)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The ControlNet's parameters and the UNet's LoRA parameters (if any)."""
        lora = [p for n, p in self.unet.named_parameters() if "lora_" in n]
        for p in lora:
            p.requires_grad_(True)
        return [*self.controlnet.parameters(), *lora]

    def train(self, mode: bool = True) -> ControlNetFineTuning:
        """Set the training mode of the ControlNet; the frozen parts stay in eval mode (no dropout)."""
        super().train(mode)
        for frozen in (self.vae, self.text_encoder, self.unet):
            frozen.eval()
        return self

    def _trained_key(self, key: str) -> bool:
        return key.startswith(_TRAINED_PREFIXES) or (key.startswith("unet.") and "lora_" in key)

    def _frozen_dtype(self) -> torch.dtype:
        name = self.hparams["frozen_dtype"]
        if name != "auto":
            return getattr(torch, name)
        precision = str(getattr(self.trainer, "precision", "32")) if self._trainer is not None else "32"
        return torch.bfloat16 if "bf16" in precision else torch.float16 if precision.startswith("16") else torch.float32

    def setup(self, stage: str) -> None:
        """Check the data's encoding; put the frozen parts in half precision when training in mixed precision."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        data_encoding = getattr(dm, "encoding", None)
        if data_encoding is not None and get_encoding(data_encoding).name != self.encoding.name:
            raise EncodingError(
                f"the model conditions on encoding {self.encoding.name!r} but the data encodes label maps as "
                f"{get_encoding(data_encoding).name!r}; set the same encoding for model and data"
            )
        dtype = self._frozen_dtype()
        for frozen in (self.vae, self.text_encoder, self.unet):
            if frozen.dtype != dtype:
                frozen.to(dtype=dtype)
        for n, p in self.unet.named_parameters():
            if "lora_" in n:
                p.data = p.data.float()

    # ------------------------------------------------------------------ loss
    def _encode_prompts(self, captions: list[str], rng: np.random.Generator | None) -> torch.Tensor:
        p = float(self.hparams["empty_prompt_probability"])
        if p > 0 and rng is not None:
            captions = ["" if rng.random() < p else c for c in captions]
        ids = self.tokenizer(
            list(captions),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)
        with torch.no_grad():
            return self.text_encoder(ids)[0]

    def denoising_loss(self, batch: dict[str, Any], generator: torch.Generator) -> torch.Tensor:
        """The DDPM noise-prediction MSE of a batch, with noise, timesteps and latents drawn from ``generator``."""
        pixels = batch["pixel_values"].to(self.device)
        cond = batch["conditioning"].to(self.device, dtype=self.controlnet.dtype)
        if cond.shape[1] != self.controlnet.config.conditioning_channels:
            raise EncodingError(
                f"conditioning has {cond.shape[1]} channel(s) but the ControlNet expects "
                f"{self.controlnet.config.conditioning_channels}"
            )
        with torch.no_grad():
            dist = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist
            eps = torch.randn(dist.mean.shape, generator=generator).to(self.device, dist.mean.dtype)
            latents = (dist.mean + dist.std * eps).float() * self.vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=generator).to(self.device)
        steps = self.noise_scheduler.config.num_train_timesteps
        t = torch.randint(0, steps, (latents.shape[0],), generator=generator).to(self.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        rng = numpy_generator(int(generator.initial_seed()), "prompts")
        text = self._encode_prompts(list(batch["caption"]), rng if self.training else None)
        down, mid = self.controlnet(
            noisy, t, encoder_hidden_states=text.to(self.controlnet.dtype), controlnet_cond=cond, return_dict=False
        )
        dtype = self.unet.dtype
        pred = self.unet(
            noisy.to(dtype),
            t,
            encoder_hidden_states=text.to(dtype),
            down_block_additional_residuals=[d.to(dtype) for d in down],
            mid_block_additional_residual=mid.to(dtype),
            return_dict=False,
        )[0]
        kind = self.noise_scheduler.config.prediction_type
        if kind == "epsilon":
            target = noise
        elif kind == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, t)
        else:
            raise ValueError(f"unsupported prediction_type {kind!r} (expected 'epsilon' or 'v_prediction')")
        return F.mse_loss(pred.float(), target.float())

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Denoising loss on a batch (noise keyed by seed, global step, batch index and rank)."""
        g = torch_generator(self.hparams["seed"], "controlnet-train", self.global_step, batch_idx, self.global_rank)
        loss = self.denoising_loss(batch, g)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["caption"]))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Denoising loss with fixed noise per batch (comparable across validations)."""
        g = torch_generator(self.hparams["seed"], "controlnet-val", batch_idx)
        loss = self.denoising_loss(batch, g)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch["caption"]))
        return loss

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        """AdamW (plain, fused or 8-bit) over the trained weights; constant learning rate after a linear warm-up."""
        params = [p for p in self.trainable_parameters() if p.requires_grad]
        hp = self.hparams
        kwargs = dict(
            lr=hp["learning_rate"], betas=tuple(hp["adam_betas"]), eps=hp["adam_eps"], weight_decay=hp["weight_decay"]
        )
        if hp["optimizer"] == "adamw_8bit":
            try:
                import bitsandbytes as bnb
            except ImportError as e:
                raise ImportError(
                    "optimizer 'adamw_8bit' needs bitsandbytes (pip install bitsandbytes, CUDA only); "
                    "use 'adamw' or 'adamw_fused' otherwise"
                ) from e
            opt = bnb.optim.AdamW8bit(params, **kwargs)
        else:
            opt = torch.optim.AdamW(params, fused=hp["optimizer"] == "adamw_fused", **kwargs)
        warmup = max(0, int(hp["lr_warmup_steps"]))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_before_zero_grad(self, optimizer: Any) -> None:
        """Update the EMA weights after each optimizer step."""
        if self.ema is not None:
            self.ema.to(self.device)
            self.ema.step(self.controlnet.parameters())

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only the trained weights (and the EMA state) in the checkpoint."""
        state = checkpoint.get("state_dict", {})
        checkpoint["state_dict"] = {k: v for k, v in state.items() if self._trained_key(k)}
        if self.ema is not None:
            checkpoint["controlnet_ema"] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check that the checkpoint holds this ControlNet's weights; restore the EMA state."""
        state = checkpoint.get("state_dict", {})
        wanted = {f"controlnet.{k}" for k in self.controlnet.state_dict()}
        missing = sorted(wanted - set(state))
        if missing:
            raise KeyError(
                f"the checkpoint lacks {len(missing)} ControlNet weights (first: {missing[:3]}); "
                "was it written by ControlNetFineTuning with the same architecture?"
            )
        if self.ema is not None and "controlnet_ema" in checkpoint:
            self.ema.load_state_dict(checkpoint["controlnet_ema"])

    # ------------------------------------------------------------------ export and rendering
    def save_controlnet(self, folder: str | Path) -> Path:
        """Write the ControlNet (EMA weights if enabled) with ``save_pretrained`` + its encoding file (+ UNet LoRA)."""
        folder = Path(folder)
        params = list(self.controlnet.parameters())
        if self.ema is not None:
            self.ema.store(params)
            self.ema.copy_to(params)
        try:
            self.controlnet.save_pretrained(str(folder))
        finally:
            if self.ema is not None:
                self.ema.restore(params)
        write_encoding_file(folder, self.encoding)
        if self.hparams["unet_lora_rank"] is not None:
            from diffusers import StableDiffusionPipeline
            from diffusers.utils import convert_state_dict_to_diffusers
            from peft.utils import get_peft_model_state_dict

            layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(self.unet))
            StableDiffusionPipeline.save_lora_weights(str(folder / "unet_lora"), unet_lora_layers=layers)
        return folder

    def on_train_end(self) -> None:
        """Write the trained ControlNet to ``save_dir`` (global rank 0)."""
        if self.hparams["save_dir"] and self.trainer.is_global_zero:
            path = self.save_controlnet(self.hparams["save_dir"])
            log.info("ControlNet (encoding %s) saved to %s", self.encoding.name, path)

    def pipeline(self) -> Any:
        """A StableDiffusionControlNetPipeline (DDIM) sharing this module's weights, for sample renders."""
        from diffusers import DDIMScheduler, StableDiffusionControlNetPipeline

        pipe = StableDiffusionControlNetPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            controlnet=self.controlnet,
            scheduler=DDIMScheduler.from_config(self.noise_scheduler.config),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe
