"""Diffusion-DPO for text-to-image diffusion models, on transformers' ``Trainer`` the way TRL builds its trainers."""

from __future__ import annotations

import contextlib
import copy
import os
import textwrap
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from transformers import TrainerCallback, default_data_collator
from transformers.trainer import TRAINING_ARGS_NAME
from trl.trainer.base_trainer import _BaseTrainer

from ..checkpointing import CheckpointSafetyMixin
from ..collators.diffusion import DiffusionPreferenceCollator, DiffusionPromptCollator
from ..losses.diffusion_dpo import (
    denoising_errors,
    diffusion_dpo_loss,
    diffusion_sft_loss,
    implicit_accuracy,
)
from .diffusion import DEFAULT_UNET_LORA_TARGETS, DiffusionFamily, NoiseLevels, family_for
from .diffusion.online import check_online, sample_online_pairs, validate_prompts
from .diffusion_dpo_config import DiffusionDPOConfig

if TYPE_CHECKING:
    from datasets import Dataset
    from diffusers import DiffusionPipeline
    from peft import LoraConfig

__all__ = ["DEFAULT_UNET_LORA_TARGETS", "DiffusionDPOTrainer", "SampleImagesCallback"]

_LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
# Columns the trainer reads: raw image pairs, or what `cache_latents` stores instead.
_DATA_COLUMNS = ["caption", "chosen", "rejected"]
_CACHED_COLUMNS = [
    "chosen_latent_dist",
    "rejected_latent_dist",
    "prompt_embeds",
    "pooled_prompt_embeds",
    "chosen_time_ids",
    "rejected_time_ids",
    "prompt_attention_mask",
]


@dataclass
class NoisedLatents:
    """One training step's denoising problem, ``N = len(sides) * B`` rows ``[chosen; rejected]``; rows ``i`` and
    ``B + i`` (the two images of pair ``i``) share ``noise`` and ``levels``."""

    latents: torch.Tensor  # (N, C, h, w) clean latents x_0, shifted and scaled as the denoiser expects
    noise: torch.Tensor  # (N, C, h, w) eps
    levels: NoiseLevels  # (N,) timesteps, and for flow matching sigmas and loss weights
    noisy_latents: torch.Tensor  # (N, C, h, w) the denoiser's input
    target: torch.Tensor  # (N, C, h, w) what it should predict (eps, v, x_0, or the velocity eps - x_0)


def partial_draw(draw, generator):
    """``draw(sample, shape, generator)`` with the generator bound, as `DiffusionFamily.sample_noise_levels` takes it."""
    return lambda sample, shape: draw(sample, shape, generator)


class DiffusionDPOTrainer(CheckpointSafetyMixin, _BaseTrainer):
    r"""
    Diffusion-DPO: align a text-to-image diffusion model to pairs of preferred / dispreferred images, relative to a
    frozen reference, without a reward model (Wallace et al. 2023,
    [arXiv:2311.12908](https://arxiv.org/abs/2311.12908)). Built on [`~transformers.Trainer`] like TRL's trainers:
    the same arguments, callbacks, checkpoints, `report_to` and `accelerate launch` configs.

    Objective (the paper's equation 14, scaled as the authors' code): one timestep $t$ and one noise $\epsilon$ per
    pair, shared by the preferred latent $x^w$ and the dispreferred one $x^l$; with per-sample mean squared denoising
    errors $e_\theta^{w}, e_\theta^{l}$ of the trained UNet and $e_\text{ref}^{w}, e_\text{ref}^{l}$ of the reference,

    $$\mathcal{L} = -\log\sigma\Big(-\frac{\beta}{2}\big[(e_\theta^{w} - e_\text{ref}^{w}) - (e_\theta^{l} -
    e_\text{ref}^{l})\big]\Big), \qquad \beta = 5000 \text{ by default (the authors' } \beta_\text{dpo}).$$

    The error is against $\epsilon$ for epsilon-prediction UNets, against the velocity
    $\sqrt{\bar\alpha_t}\,\epsilon - \sqrt{1-\bar\alpha_t}\,x_0$ for v-prediction UNets, and, for the flow-matching
    transformers, against $\epsilon - x_0$ at $x_\sigma = (1-\sigma)x_0 + \sigma\epsilon$ (times diffusers' SD3 loss
    weighting). `loss_type="sft"` trains the paper's SFT baseline, $e_\theta^{w}$ alone. See
    `trl_extras.losses.diffusion_dpo`.

    Models: pipelines that `DiffusionPipeline.from_pretrained` loads, each through a small family adapter
    (`trl_extras.trainer.diffusion`): Stable Diffusion 1.x/2.x and SDXL (UNet, DDPM), SD3/SD3.5, Flux.1 (dev and
    schnell) and Sana (diffusion transformers, flow matching). Only the denoiser trains; the VAE and text encoder(s)
    are frozen. The reference is a frozen copy of the initial denoiser for full fine-tuning, or, with `peft_config`
    (LoRA) or `quantization_config` (QLoRA), the same network with its adapters disabled: no second copy. Each step
    runs one forward over the concatenated `[preferred; dispreferred]` batch with gradients, and one for the
    reference under `torch.no_grad()`.

    Online pairs: with `reward_funcs` (TRL's GRPO reward signature over PIL images), the datasets hold prompts and
    each step samples `args.num_generations` images per prompt, scores them and trains on the best versus the worst.

    Data: a `datasets.Dataset` of Pick-a-Pic rows (`caption`, `jpg_0`, `jpg_1`, `label_0`; ties dropped and counted)
    or of `caption`/`chosen`/`rejected` rows, checked and normalised by `trl_extras.data.validate_image_pair_dataset`,
    then batched by [`~trl_extras.DiffusionPreferenceCollator`].

    Example:

    ```python
    >>> from datasets import Dataset
    >>> from PIL import Image
    >>> from trl_extras import DiffusionDPOConfig, DiffusionDPOTrainer, build_tiny_diffusion_pipeline

    >>> red, blue = Image.new("RGB", (32, 32), (255, 0, 0)), Image.new("RGB", (32, 32), (0, 0, 255))
    >>> dataset = Dataset.from_list([{"caption": "a red square", "chosen": red, "rejected": blue}] * 8)
    >>> trainer = DiffusionDPOTrainer(
    ...     model=build_tiny_diffusion_pipeline("/tmp/tiny-sd"),
    ...     args=DiffusionDPOConfig("/tmp/diffusion-dpo", max_steps=2, bf16=False, report_to="none"),
    ...     train_dataset=dataset,
    ... )
    >>> trainer.train()
    ```

    Hooks overridden (the training loop, optimiser, scheduler, logging and checkpoint rotation are `Trainer`'s):

    - `__init__`: loads the pipeline, freezes the VAE/text encoders, adds LoRA or keeps a frozen reference copy, checks
      the datasets, then calls `Trainer.__init__` with the UNet as `model`; optionally caches latents/embeddings.
    - `compute_loss`: the objective above; logs `rewards/chosen`, `rewards/rejected`, `rewards/margins`,
      `rewards/accuracies` (implicit accuracy: pairs where the model beats the reference margin, ties count 1/2) and
      `diffusion_dpo/{model,ref}_mse_{chosen,rejected}`.
    - `prediction_step`, `evaluate`, `log`: evaluation through `compute_loss` (with a fixed noise seed per call of
      `evaluate`) and metric averaging, as TRL's `DPOTrainer` does.
    - `_set_signature_columns_if_needed`: keeps the image/caption (or cached) columns.
    - `_save`, `save_model`, `_load_from_checkpoint`, `_load_best_model`: diffusers formats. Full fine-tuning writes
      the UNet to `<dir>/unet/` (and `save_model()` called by you writes the whole pipeline, so
      `DiffusionPipeline.from_pretrained(output_dir)` loads it); LoRA writes `pytorch_lora_weights.safetensors`, which
      `pipeline.load_lora_weights(dir)` loads. Checkpoints resume from these files.
    - `_save_checkpoint` writes the model card (as TRL's trainers do); `_send_telemetry` sends nothing (TRL's usage
      ping reads `model.config.model_type`, which diffusers models lack, and counts TRL's own trainers only).
    """

    _tag_names = ["trl", "trl-extras", "diffusion-dpo", "diffusers", "text-to-image"]
    _name = "Diffusion-DPO"
    _paper = {
        "title": "Diffusion Model Alignment Using Direct Preference Optimization",
        "id": "2311.12908",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @inproceedings{wallace2024diffusion,
                title        = {{Diffusion Model Alignment Using Direct Preference Optimization}},
                author       = {Bram Wallace and Meihua Dang and Rafael Rafailov and Linqi Zhou and Aaron Lou and Senthil Purushwalkam and Stefano Ermon and Caiming Xiong and Shafiq Joty and Nikhil Naik},
                year         = 2024,
                booktitle    = {IEEE/CVF Conference on Computer Vision and Pattern Recognition, CVPR 2024},
                pages        = {8228--8238},
            }"""),
    }
    # `compute_loss` returns the mean over the pairs of the micro-batch; `Trainer` divides by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: str | DiffusionPipeline,
        args: DiffusionDPOConfig | None = None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | dict[str, Dataset] | None = None,
        data_collator: DiffusionPreferenceCollator | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple = (None, None),
        peft_config: LoraConfig | None = None,
        quantization_config: Any = None,
        reward_funcs: Callable | list[Callable] | None = None,
    ):
        """
        Args:
            model: a pipeline directory or Hub id (loaded with `DiffusionPipeline.from_pretrained(model,
                **args.model_init_kwargs)`), or a loaded `DiffusionPipeline` whose `unet` is trained in place.
            args: the [`DiffusionDPOConfig`]; defaults to one writing to `./<model name>-DiffusionDPO`.
            train_dataset, eval_dataset: image preference datasets (see the class docstring).
            data_collator: defaults to a [`DiffusionPreferenceCollator`] built from `args` and the pipeline's
                tokenizer(s).
            callbacks, optimizers: as in `Trainer`.
            peft_config: a `peft.LoraConfig` for the UNet (LoRA); `target_modules=None` means
                `DEFAULT_UNET_LORA_TARGETS`. The reference is the UNet with the adapter disabled.
            quantization_config: QLoRA: a `diffusers.BitsAndBytesConfig` (with `peft_config`) or a
                `trl_extras.QLoRAConfig` (which also gives the LoRA settings), used to load the UNet in 4 bit when
                `model` is a path. diffusers' bitsandbytes loader needs a CUDA GPU.
            reward_funcs: online pairs: one or more functions with TRL's GRPO reward signature,
                ``f(prompts: list[str], completions: list[PIL.Image], **columns) -> list[float]``. The datasets then
                hold prompts (a ``prompt`` or ``caption`` column); each step samples `args.num_generations` images
                per prompt, scores them (weighted by `args.reward_weights`) and trains on the best versus the worst.
        """
        if args is None:
            name = model if isinstance(model, str) else "pipeline"
            args = DiffusionDPOConfig(f"{os.path.basename(str(name).rstrip('/'))}-DiffusionDPO")
        if train_dataset is None:
            raise ValueError("DiffusionDPOTrainer needs a `train_dataset`.")

        if reward_funcs is not None and not isinstance(reward_funcs, (list, tuple)):
            reward_funcs = [reward_funcs]
        self.reward_funcs = list(reward_funcs or [])
        self.online = bool(self.reward_funcs)
        if self.online:
            check_online(self.reward_funcs, args)
        # Data first: a bad row fails before any model is loaded.
        check = partial(validate_prompts, validate_pairs=_validate) if self.online else _validate
        check = partial(check, args=args)
        columns = set(getattr(train_dataset, "column_names", None) or [])
        if self.online and {"chosen", "jpg_0"} & columns:
            raise ValueError(
                "`reward_funcs` given: online Diffusion-DPO samples its own images and trains on prompts, but the "
                f"train dataset has image-pair columns {sorted(columns)}. Pass prompts only (e.g. "
                "`dataset.select_columns(['caption'])`), or drop `reward_funcs` to train on these pairs."
            )
        train_dataset = check(train_dataset)
        if isinstance(eval_dataset, dict):
            eval_dataset = {key: check(value) for key, value in eval_dataset.items()}
        elif eval_dataset is not None:
            eval_dataset = check(eval_dataset)

        peft_config, quantization_config = _resolve_qlora(peft_config, quantization_config)
        pipeline = _load_pipeline(model, args, quantization_config)
        self.pipeline = pipeline
        self.family: DiffusionFamily = family_for(pipeline, args)
        denoiser, kind = self.family.denoiser, self.family.denoiser_name

        # Frozen parts.
        for module in self._frozen_modules():
            module.requires_grad_(False)
            module.eval()

        # Trainable denoiser: all of it, or LoRA adapters (the reference is then the same network, adapters disabled).
        if peft_config is not None:
            if getattr(denoiser, "peft_config", None):
                raise ValueError(
                    f"`peft_config` was given but the pipeline's {kind} already has adapters "
                    f"({sorted(denoiser.peft_config)}): pass one or the other."
                )
            if peft_config.target_modules is None:
                peft_config = copy.copy(peft_config)
                peft_config.target_modules = list(self.family.default_lora_targets)
            denoiser.requires_grad_(False)
            denoiser.add_adapter(peft_config)
        self.is_peft = bool(getattr(denoiser, "peft_config", None))
        if self.is_peft:
            for name, parameter in denoiser.named_parameters():
                parameter.requires_grad_("lora_" in name)
        elif getattr(denoiser, "is_quantized", False):
            raise ValueError(f"A quantized {kind} can only be trained with LoRA adapters: pass `peft_config`.")
        else:
            denoiser.requires_grad_(True)
        # Full fine-tuning: a frozen copy of the initial denoiser is the reference (the SFT baseline needs none).
        self.ref_model = None
        if not self.is_peft and args.loss_type != "sft":
            self.ref_model = copy.deepcopy(denoiser).requires_grad_(False).eval()

        # transformers' Trainer switches checkpointing on through `model.activation_checkpointing_enable(...)`;
        # diffusers calls it `enable_gradient_checkpointing()`. Bridge the two names on this denoiser.
        denoiser.activation_checkpointing_enable = lambda *a, **k: denoiser.enable_gradient_checkpointing()

        self.prediction_type = self.family.prediction_type
        self.resolution = args.resolution or self.family.default_resolution()
        multiple = self.family.resolution_multiple()
        if self.resolution % multiple:
            raise ValueError(
                f"DiffusionDPOConfig.resolution must be a multiple of {multiple} for this {self.family.name} "
                f"pipeline (the VAE's downsampling factor times the {kind}'s patch size), got {self.resolution}."
            )

        self.image_collator = self.family.make_collator(self.resolution)
        if data_collator is None:
            data_collator = DiffusionPromptCollator(self.image_collator) if self.online else self.image_collator
        elif not self.online:
            self.image_collator = data_collator

        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._eval_generator: torch.Generator | None = None

        super().__init__(
            model=denoiser,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=None,
            callbacks=callbacks,
            optimizers=optimizers,
        )

        # Frozen modules live on the device in the mixed-precision dtype; LoRA's base weights too (adapters in fp32).
        device, dtype = self.accelerator.device, self._frozen_dtype()
        for module in self._frozen_modules():
            _move(module, device, dtype)
        if self.args.fp16 and getattr(pipeline.vae.config, "force_upcast", False):  # SDXL's VAE overflows in fp16
            _move(pipeline.vae, device, torch.float32)
        if self.is_peft and not getattr(denoiser, "is_quantized", False):
            _move(denoiser, device, dtype)
            for parameter in denoiser.parameters():
                if parameter.requires_grad:
                    parameter.data = parameter.data.float()
        if self.ref_model is not None:
            if self.is_deepspeed_enabled:
                from trl.models.utils import prepare_deepspeed

                self.ref_model = prepare_deepspeed(self.ref_model, self.accelerator)
            elif self.is_fsdp_enabled:
                from trl.models.utils import prepare_fsdp

                self.ref_model = prepare_fsdp(self.ref_model, self.accelerator)
            else:
                _move(self.ref_model, device, dtype)

        if args.cache_latents and not self.online:
            self.train_dataset = self._cache_dataset(self.train_dataset, "train")
            if isinstance(self.eval_dataset, dict):
                self.eval_dataset = {k: self._cache_dataset(v, f"eval {k}") for k, v in self.eval_dataset.items()}
            elif self.eval_dataset is not None:
                self.eval_dataset = self._cache_dataset(self.eval_dataset, "eval")
            self.data_collator = default_data_collator

        if args.sample_prompts:
            self.add_callback(SampleImagesCallback(self))

    # ------------------------------------------------------------------ model pieces

    @property
    def ref_unet(self) -> torch.nn.Module | None:
        """The frozen reference copy (``ref_model``), under the name of the UNet-only releases."""
        return self.ref_model

    @ref_unet.setter
    def ref_unet(self, value: torch.nn.Module | None) -> None:
        self.ref_model = value

    @property
    def is_sdxl(self) -> bool:
        return self.family.name == "sdxl"

    def _frozen_modules(self) -> list[torch.nn.Module]:
        return self.family.frozen_modules()

    def _frozen_dtype(self) -> torch.dtype:
        if self.args.bf16:
            return torch.bfloat16
        return torch.float16 if self.args.fp16 else torch.float32

    @contextlib.contextmanager
    def _reference(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """The reference denoiser: the frozen copy, or ``model`` with its adapters disabled for the duration."""
        if self.ref_model is not None:
            yield self.ref_model
            return
        denoiser = self.accelerator.unwrap_model(model)
        denoiser.disable_adapters()
        try:
            yield model
        finally:
            denoiser.enable_adapters()

    # ------------------------------------------------------------------ encoding

    @torch.no_grad()
    def encode_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Collator output -> what the denoising step needs (and what ``cache_latents`` stores), per pair:

        - ``{side}_latent_dist``: ``(B, 2C, h, w)`` the VAE posterior's mean and log-variance (unscaled), or Sana's
          deterministic DC-AE latent ``(B, C, h, w)`` (`DiffusionFamily.encode_images`);
        - the family's text conditioning (`DiffusionFamily.encode_conditioning`): ``prompt_embeds`` ``(B, L, D)``;
          SDXL, SD3 and Flux also ``pooled_prompt_embeds`` ``(B, D2)``; SDXL ``{side}_time_ids`` ``(B, 6)``; Sana
          ``prompt_attention_mask`` ``(B, L)``.
        """
        pipeline, device = self.pipeline, self.accelerator.device
        sides = self._sides()
        encoded = {}
        with self.accelerator.autocast():
            for side in sides:
                pixels = batch[f"{side}_pixel_values"].to(device, dtype=pipeline.vae.dtype)
                encoded[f"{side}_latent_dist"] = self.family.encode_images(pixels)
            encoded.update(self.family.encode_conditioning(batch, sides, self.resolution, device))
        return encoded

    def _sides(self) -> tuple[str, ...]:
        return ("chosen",) if self.args.loss_type == "sft" else ("chosen", "rejected")

    def _cache_dataset(self, dataset: Dataset, name: str) -> Dataset:
        """``cache_latents``: map ``dataset`` through the image collator and ``encode_batch`` once."""
        import uuid

        def encode(rows: dict[str, list]) -> dict[str, Any]:
            features = [dict(zip(rows, values)) for values in zip(*rows.values())]
            return {
                key: value.cpu().numpy() for key, value in self.encode_batch(self.image_collator(features)).items()
            }

        return dataset.map(
            encode,
            batched=True,
            batch_size=self.args.per_device_train_batch_size,
            remove_columns=dataset.column_names,
            new_fingerprint=uuid.uuid4().hex,  # the encoders are not hashable; never reuse a stale cache
            desc=f"Caching VAE latents and text embeddings ({name})",
        ).with_format("torch")

    def _draw(self, sample, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
        """``sample(shape)`` for this process. transformers seeds every process alike, so all processes draw one
        block for all of them (their RNG streams stay in step) and each keeps its own slice: no two processes share
        noise or timesteps."""
        processes, rank = self.accelerator.num_processes, self.accelerator.process_index
        device = self.accelerator.device if generator is None else generator.device
        block = sample((processes * shape[0], *shape[1:]), generator=generator, device=device)
        return block[rank * shape[0] : (rank + 1) * shape[0]].to(self.accelerator.device)

    # ------------------------------------------------------------------ loss

    def noised_latents(self, inputs: dict[str, torch.Tensor], generator: torch.Generator | None) -> NoisedLatents:
        """One step's denoising problem for the ``[chosen; rejected]`` latents of ``inputs``: the latents drawn from
        the VAE posteriors, one noise and one noise level per pair shared by both of its images, the noised latents
        and the target (by the family's adapter)."""
        sides = self._sides()
        latents = torch.cat([self._latents(inputs, side, generator) for side in sides])
        num_pairs = inputs["prompt_embeds"].shape[0]
        noise = self._draw(torch.randn, latents[:num_pairs].shape, generator).repeat(len(sides), 1, 1, 1)
        draw = partial_draw(self._draw, generator)
        levels = self.family.sample_noise_levels(num_pairs, draw, tuple(latents.shape)).repeat(len(sides))
        return NoisedLatents(
            latents=latents,
            noise=noise,
            levels=levels,
            noisy_latents=self.family.add_noise(latents, noise, levels),
            target=self.family.target(latents, noise, levels),
        )

    def _latents(self, inputs, side: str, generator) -> torch.Tensor:
        if f"{side}_latents" in inputs:  # online pairs: the sampled latents themselves
            return inputs[f"{side}_latents"]
        return self.family.sample_latents(inputs[f"{side}_latent_dist"], generator)

    # ------------------------------------------------------------------ online pairs

    def online_pairs(
        self, inputs: dict[str, Any], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Prompts -> a batch of best-versus-worst pairs: sample ``K = args.num_generations`` images per prompt with
        the policy or the reference, score them with the reward functions, keep the highest- and lowest-reward
        latents of each prompt (``chosen_latents``/``rejected_latents`` ``(P, C, h, w)``, the sampled latents
        themselves) with the prompts' conditioning. See `trl_extras.trainer.diffusion.online`."""
        return sample_online_pairs(self, inputs, generator)

    # ------------------------------------------------------------------ loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        generator = None if mode == "train" else self._eval_generator
        if "prompt_embeds" not in inputs:  # raw images or prompts; with `cache_latents` the dataset holds these
            is_prompts = "chosen_pixel_values" not in inputs  # online mode still evaluates on image pairs
            inputs = self.online_pairs(inputs, generator) if is_prompts else self.encode_batch(inputs)
        sides = self._sides()
        step = self.noised_latents(inputs, generator)
        model_pred = self.family.predict(model, step.noisy_latents, step.levels, inputs, sides)
        weights = step.levels.weights
        model_errors = denoising_errors(model_pred, step.target, weights)  # (len(sides) * B,)
        metrics = {}
        if self.args.loss_type == "sft":
            losses = diffusion_sft_loss(model_errors)
            metrics["diffusion_dpo/model_mse_chosen"] = model_errors.detach()
        else:
            with torch.no_grad(), self.accelerator.autocast(), self._reference(model) as reference:
                ref_pred = self.family.predict(reference, step.noisy_latents, step.levels, inputs, sides)
            ref_errors = denoising_errors(ref_pred, step.target, weights)
            model_errors_w, model_errors_l = model_errors.chunk(2)
            ref_errors_w, ref_errors_l = ref_errors.chunk(2)
            losses, chosen_rewards, rejected_rewards = diffusion_dpo_loss(
                model_errors_w, model_errors_l, ref_errors_w, ref_errors_l, beta=self.args.beta
            )
            chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
            metrics.update(
                {
                    "rewards/chosen": chosen_rewards,
                    "rewards/rejected": rejected_rewards,
                    "rewards/margins": chosen_rewards - rejected_rewards,
                    "rewards/accuracies": implicit_accuracy(chosen_rewards, rejected_rewards),
                    "diffusion_dpo/model_mse_chosen": model_errors_w.detach(),
                    "diffusion_dpo/model_mse_rejected": model_errors_l.detach(),
                    "diffusion_dpo/ref_mse_chosen": ref_errors_w,
                    "diffusion_dpo/ref_mse_rejected": ref_errors_l,
                }
            )
        for key, value in metrics.items():
            self._metrics[mode][key].append(self.accelerator.gather(value).mean().item())
        loss = losses.mean()
        return (loss, metrics) if return_outputs else loss

    # ------------------------------------------------------------------ evaluation and logging (as TRL's DPOTrainer)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        # the same noise and timesteps at every evaluation, so eval metrics compare across steps
        self._eval_generator = torch.Generator().manual_seed(self.args.seed)
        try:
            return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        finally:
            self._eval_generator = None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        metrics = {key: sum(values) / len(values) for key, values in self._metrics[mode].items()}
        if mode == "eval":
            metrics = {f"eval_{key}": value for key, value in metrics.items()}
        logs.update(metrics)
        super().log(logs, start_time)
        self._metrics[mode].clear()

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            if self.online:  # every column reaches the reward functions, as in GRPO
                self._signature_columns = list(self.train_dataset.column_names or []) + _DATA_COLUMNS
            else:
                self._signature_columns = _DATA_COLUMNS + _CACHED_COLUMNS

    def _send_telemetry(self):
        return

    # ------------------------------------------------------------------ saving and loading (diffusers formats)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        denoiser, subfolder = self.accelerator.unwrap_model(self.model), self.family.denoiser_name
        if self.is_peft:
            lora_layers = self.family.lora_layers(denoiser, state_dict)
            self.family.save_lora_weights(output_dir, lora_layers, denoiser.peft_config["default"].to_dict())
        elif state_dict is None:
            denoiser.save_pretrained(os.path.join(output_dir, subfolder))
        else:  # gathered by DeepSpeed / FSDP
            import safetensors.torch

            denoiser.save_config(os.path.join(output_dir, subfolder))
            safetensors.torch.save_file(
                {key: value.contiguous() for key, value in state_dict.items()},
                os.path.join(output_dir, subfolder, "diffusion_pytorch_model.safetensors"),
            )
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call=_internal_call)
        if _internal_call or self.is_peft or not self.args.should_save:
            return
        # A full fine-tune saved by the user: write the frozen components next to `unet/` (`transformer/`), so the
        # directory is a complete pipeline (`DiffusionPipeline.from_pretrained(output_dir)`).
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        self.pipeline.save_config(output_dir)
        for name, component in self.pipeline.components.items():
            if name != self.family.denoiser_name and hasattr(component, "save_pretrained"):
                component.save_pretrained(os.path.join(output_dir, name))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        denoiser = self.accelerator.unwrap_model(model if model is not None else self.model)
        lora_file = os.path.join(resume_from_checkpoint, _LORA_WEIGHTS_NAME)
        denoiser_dir = os.path.join(resume_from_checkpoint, self.family.denoiser_name)
        if self.is_peft and os.path.isfile(lora_file):
            _load_lora_into(denoiser, lora_file, prefix=self.family.denoiser_name)
        elif not self.is_peft and os.path.isdir(denoiser_dir):
            saved = type(denoiser).from_pretrained(denoiser_dir, torch_dtype=denoiser.dtype)
            denoiser.load_state_dict(saved.state_dict())
        else:
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self):
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._load_best_model()
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    def _save_checkpoint(self, model, trial):
        model_name = (self.args.hub_model_id or os.path.basename(self.args.output_dir.rstrip("/"))).split("/")[-1]
        self.create_model_card(model_name=model_name)
        super()._save_checkpoint(model, trial)

    # ------------------------------------------------------------------ sample images

    @torch.no_grad()
    def generate_samples(self, prompts: list[str]):
        """Render ``prompts`` with the current denoiser (seed ``args.seed``); returns a list of PIL images."""
        denoiser = self.accelerator.unwrap_model(self.model)
        was_training = denoiser.training
        denoiser.eval()
        kwargs = {"num_inference_steps": self.args.sample_num_inference_steps, **self.family.sample_kwargs()}
        if self.args.sample_guidance_scale is not None:
            kwargs["guidance_scale"] = self.args.sample_guidance_scale
        generator = torch.Generator(device="cpu").manual_seed(self.args.seed)
        self.pipeline.set_progress_bar_config(disable=True)
        try:
            with self.accelerator.autocast():
                images = self.pipeline(
                    prompts, generator=generator, height=self.resolution, width=self.resolution, **kwargs
                ).images
        finally:
            denoiser.train(was_training)
        return images


class SampleImagesCallback(TrainerCallback):
    """Every ``args.sample_steps`` steps, render ``args.sample_prompts`` with the model being trained.

    The images go, as one grid, to ``<output_dir>/samples/step-<N>.png``, and to Weights & Biases (one image per
    prompt, key ``diffusion_dpo/samples``) when a wandb run is active. Only the main process renders.
    """

    def __init__(self, trainer: DiffusionDPOTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % args.sample_steps != 0 or not state.is_world_process_zero:
            return
        from diffusers.utils import make_image_grid

        prompts = list(args.sample_prompts)
        images = self.trainer.generate_samples(prompts)
        directory = os.path.join(args.output_dir, "samples")
        os.makedirs(directory, exist_ok=True)
        make_image_grid(images, rows=1, cols=len(images)).save(
            os.path.join(directory, f"step-{state.global_step}.png")
        )
        if "wandb" in (args.report_to or []):
            import wandb

            if wandb.run is not None:
                wandb.log(
                    {
                        "diffusion_dpo/samples": [wandb.Image(im, caption=p) for im, p in zip(images, prompts)],
                        "train/global_step": state.global_step,
                    }
                )


# ---------------------------------------------------------------------- helpers


def _resolve_qlora(peft_config, quantization_config):
    """A ``trl_extras.QLoRAConfig`` becomes a diffusers ``BitsAndBytesConfig`` plus (if none given) a LoRA config."""
    from ..quantization import QLoRAConfig

    if not isinstance(quantization_config, QLoRAConfig):
        return peft_config, quantization_config
    qlora = quantization_config
    if peft_config is None:
        from peft import LoraConfig

        targets = qlora.lora_target_modules
        peft_config = LoraConfig(
            r=qlora.lora_r,
            lora_alpha=qlora.lora_alpha,
            lora_dropout=qlora.lora_dropout,
            target_modules=None if targets == "all-linear" else targets,  # UNet: the attention projections
            init_lora_weights="gaussian",
        )
    if not qlora.load_in_4bit:
        return peft_config, None
    from diffusers import BitsAndBytesConfig

    return peft_config, BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=qlora.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=qlora.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=qlora.compute_dtype,
    )


def _load_pipeline(model, args: DiffusionDPOConfig, quantization_config) -> DiffusionPipeline:
    """``model`` loaded (a path or Hub id) or as given; with ``quantization_config`` the denoiser (``unet`` or
    ``transformer``) is loaded in 4 bit through diffusers' bitsandbytes quantizer (CUDA only)."""
    import diffusers
    from diffusers import DiffusionPipeline

    if not isinstance(model, str):
        if quantization_config is not None:
            raise ValueError(
                "`quantization_config` only applies when `model` is a path; a loaded pipeline is used as it is."
            )
        return model
    kwargs = dict(args.model_init_kwargs or {})
    index = DiffusionPipeline.load_config(model, **{k: v for k, v in kwargs.items() if k in ("revision",)})
    if "safety_checker" in index:  # SD 1.x ships an NSFW classifier the trainer never uses
        kwargs.setdefault("safety_checker", None)
        kwargs.setdefault("requires_safety_checker", False)
    if quantization_config is not None:
        if not torch.cuda.is_available():
            raise RuntimeError(
                "`quantization_config` (QLoRA) loads the denoiser in 4 bit through diffusers' bitsandbytes "
                "quantizer, which requires a CUDA GPU (diffusers raises 'No GPU found' on CPU). Train with LoRA "
                "only (`peft_config`) on this machine."
            )
        subfolder = "unet" if "unet" in index else "transformer"
        if subfolder not in index:
            raise ValueError(f"{model}/model_index.json names neither a `unet` nor a `transformer` to quantize.")
        denoiser_class = getattr(diffusers, index[subfolder][1])
        denoiser_kwargs = {k: v for k, v in kwargs.items() if k in ("revision", "variant", "torch_dtype")}
        kwargs[subfolder] = denoiser_class.from_pretrained(
            model, subfolder=subfolder, quantization_config=quantization_config, **denoiser_kwargs
        )
    return DiffusionPipeline.from_pretrained(model, **kwargs)


def _move(module: torch.nn.Module, device, dtype: torch.dtype) -> None:
    """``module.to(device, dtype)``, casting only when the dtype changes (diffusers warns about every cast)."""
    module.to(device)
    if module.dtype != dtype:
        module.to(dtype=dtype)


def _validate(dataset, args: DiffusionDPOConfig):
    """Check and normalise an image preference dataset with the shared data layer (``datasets.Dataset`` only)."""
    from datasets import Dataset, IterableDataset

    from ..data import validate_image_pair_dataset

    if args.cache_latents and not isinstance(dataset, Dataset):
        raise TypeError(
            f"DiffusionDPOConfig.cache_latents=True needs `datasets.Dataset`s (it maps them once), got "
            f"{type(dataset).__name__}."
        )
    if not isinstance(dataset, (Dataset, IterableDataset)):
        return dataset

    return validate_image_pair_dataset(
        dataset, ties=args.ties, on_invalid="raise", allow_size_mismatch=args.allow_size_mismatch
    )


def _load_lora_into(denoiser: torch.nn.Module, lora_file: str, prefix: str = "unet") -> None:
    """Load a ``pytorch_lora_weights.safetensors`` written by ``_save`` into the denoiser's ``default`` adapter
    (keys ``<prefix>.<module>.lora_A.weight``, ``prefix`` ``"unet"`` or ``"transformer"``)."""
    import safetensors.torch
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft.utils import set_peft_model_state_dict

    state_dict = safetensors.torch.load_file(lora_file)
    state_dict = {
        key.removeprefix(f"{prefix}."): value for key, value in state_dict.items() if key.startswith(f"{prefix}.")
    }
    result = set_peft_model_state_dict(denoiser, convert_unet_state_dict_to_peft(state_dict), adapter_name="default")
    if getattr(result, "unexpected_keys", None):
        raise ValueError(
            f"{lora_file} has LoRA weights this {prefix}'s adapter does not: {result.unexpected_keys[:5]}"
        )
