"""Diffusion-DPO on transformers' ``Trainer``, as TRL builds its trainers: the step and the wiring. The objective is
in `trl_extras.losses.diffusion_dpo`; families, loading, data checks, encoding, saving, online pairs: `.diffusion`."""

from __future__ import annotations

import contextlib
import os
import textwrap
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from transformers import default_data_collator
from transformers.trainer import TRAINING_ARGS_NAME

from .. import _trl_compat
from ..checkpointing import CheckpointSafetyMixin
from ..collators.diffusion import DiffusionPromptCollator
from ..losses.diffusion_dpo import denoising_errors, diffusion_dpo_loss, diffusion_sft_loss, implicit_accuracy
from ._init import resolve_args
from .diffusion import DEFAULT_UNET_LORA_TARGETS, DiffusionFamily, encoding, family_for, loading
from .diffusion.data import check_datasets
from .diffusion.encoding import CACHED_COLUMNS, DATA_COLUMNS, NoisedLatents
from .diffusion.online import check_online, sample_online_pairs
from .diffusion.sampling import SampleImagesCallback, generate_samples
from .diffusion.saving import load_denoiser, save_denoiser, save_frozen_components
from .diffusion_dpo_config import DiffusionDPOConfig

if TYPE_CHECKING:
    from datasets import Dataset
    from diffusers import DiffusionPipeline
    from peft import LoraConfig

__all__ = ["DEFAULT_UNET_LORA_TARGETS", "DiffusionDPOTrainer", "NoisedLatents", "SampleImagesCallback"]


class DiffusionDPOTrainer(CheckpointSafetyMixin, _trl_compat.BaseTrainer):
    r"""
    Trainer for Diffusion-DPO (Wallace et al. 2023, [arXiv:2311.12908](https://arxiv.org/abs/2311.12908)): aligns
    a text-to-image pipeline to preferred / dispreferred image pairs against a frozen reference with the objective of
    `trl_extras.losses.diffusion_dpo` (`loss_type="sft"`: the paper's SFT baseline). A family adapter
    (`trl_extras.trainer.diffusion`: SD 1.x/2.x and SDXL UNets, DDPM; SD3/SD3.5, Flux.1, Sana, flow matching) encodes,
    noises and calls the denoiser, the only part that trains; the reference is its frozen initial copy, or with LoRA
    / QLoRA the same network with the adapters disabled. Data: image pairs (`validate_image_pair_dataset`) or, with
    `reward_funcs`, prompts whose best and worst of `args.num_generations` samples form each pair.

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

    Overrides: `__init__`, `compute_loss`, `prediction_step`, `evaluate`, `log`, `_set_signature_columns_if_needed`,
    `_save`, `save_model`, `_load_from_checkpoint`, `_load_best_model`, `_save_checkpoint`, `_send_telemetry`.
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
        *,
        peft_config: LoraConfig | None = None,
        quantization_config: Any = None,
        reward_funcs: Callable | list[Callable] | None = None,
        **kwargs,
    ):
        """``model``: a pipeline path / Hub id (loaded with ``args.model_init_kwargs``) or a loaded pipeline, trained
        in place. ``peft_config``: LoRA (``target_modules=None``: the family's default). ``quantization_config``:
        QLoRA, a `diffusers.BitsAndBytesConfig` with ``peft_config`` or a `trl_extras.QLoRAConfig` (CUDA, ``model`` a
        path). ``reward_funcs``: online pairs, ``f(prompts, completions: list[PIL.Image], **columns) -> list[float]``.
        The rest (``train_dataset``, ``eval_dataset``, ``data_collator``, ``callbacks``, ``optimizers``, ...) is
        `transformers.Trainer`'s.
        """
        args = resolve_args(args, DiffusionDPOConfig, model, "DiffusionDPOTrainer", "DiffusionDPO", "pipeline")
        if kwargs.get("train_dataset") is None:
            raise ValueError("DiffusionDPOTrainer needs a `train_dataset`.")
        self.reward_funcs = check_online(reward_funcs, args)
        self.online = bool(self.reward_funcs)
        # Data first: a bad row fails before any model is loaded.
        kwargs["train_dataset"], kwargs["eval_dataset"] = check_datasets(
            kwargs["train_dataset"], kwargs.get("eval_dataset"), args, self.online
        )

        peft_config, quantization_config = loading.resolve_qlora(peft_config, quantization_config)
        self.pipeline = loading.load_pipeline(model, args, quantization_config)
        self.family: DiffusionFamily = family_for(self.pipeline, args)
        self.is_peft, self.ref_model = loading.make_trainable(self.family, peft_config, args)
        self.prediction_type = self.family.prediction_type
        self.resolution = loading.training_resolution(self.family, args)
        self.image_collator = self.family.make_collator(self.resolution)
        data_collator = kwargs.pop("data_collator", None)
        if data_collator is None:
            data_collator = DiffusionPromptCollator(self.image_collator) if self.online else self.image_collator
        elif not self.online:
            self.image_collator = data_collator
        # {"train" | "eval": {name: [per-step values]}}: averaged and cleared by `log`, as TRL's trainers do
        self._step_metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._eval_generator: torch.Generator | None = None

        super().__init__(
            model=self.family.denoiser, args=args, data_collator=data_collator, processing_class=None, **kwargs
        )
        self.ref_model = loading.place_on_device(self)
        if args.cache_latents and not self.online:
            self.train_dataset = self._cache_dataset(self.train_dataset, "train")
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

    def _frozen_dtype(self) -> torch.dtype:
        return loading.frozen_dtype(self.args)

    def _reference(self, model: torch.nn.Module) -> contextlib.AbstractContextManager[torch.nn.Module]:
        """The reference denoiser: the frozen copy, or ``model`` with its adapters disabled for the duration."""
        if self.ref_model is not None:
            return contextlib.nullcontext(self.ref_model)
        return loading.adapters_disabled(model, self.accelerator.unwrap_model(model))

    def _sides(self) -> tuple[str, ...]:
        return ("chosen",) if self.args.loss_type == "sft" else ("chosen", "rejected")

    # ------------------------------------------------------------------ the denoising problem

    def encode_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Collator output -> latent distributions and text conditioning per pair (`encoding.encode_batch`)."""
        return encoding.encode_batch(self.family, batch, self._sides(), self.resolution, self.accelerator)

    def _cache_dataset(self, dataset: Dataset | dict[str, Dataset] | None, name: str):
        encode = lambda features: self.encode_batch(self.image_collator(features))  # noqa: E731
        return encoding.cache_dataset(dataset, encode, self.args.per_device_train_batch_size, name)

    def _draw(self, sample, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
        return encoding.draw_for_process(self.accelerator, sample, shape, generator)

    def noised_latents(self, inputs: dict[str, torch.Tensor], generator: torch.Generator | None) -> NoisedLatents:
        """One step's denoising problem for the ``[chosen; rejected]`` latents of ``inputs``: the latents drawn from
        the VAE posteriors (or the sampled ones of online pairs), one noise and one noise level per pair shared by
        both of its images, the noised latents and the target (by the family's adapter)."""
        sides = self._sides()
        latents = torch.cat([encoding.latents(self.family, inputs, side, generator) for side in sides])
        num_pairs = inputs["prompt_embeds"].shape[0]
        noise = self._draw(torch.randn, latents[:num_pairs].shape, generator).repeat(len(sides), 1, 1, 1)
        draw = encoding.partial_draw(self._draw, generator)
        levels = self.family.sample_noise_levels(num_pairs, draw, tuple(latents.shape)).repeat(len(sides))
        return NoisedLatents(
            latents=latents,
            noise=noise,
            levels=levels,
            noisy_latents=self.family.add_noise(latents, noise, levels),
            target=self.family.target(latents, noise, levels),
        )

    def online_pairs(self, inputs: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        """Prompts -> best-versus-worst pairs of sampled latents, with conditioning (`online.sample_online_pairs`)."""
        return sample_online_pairs(self, inputs, generator)

    # ------------------------------------------------------------------ loss and metrics

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        generator = None if mode == "train" else self._eval_generator
        if "prompt_embeds" not in inputs:  # raw images or prompts; with `cache_latents` the dataset holds these
            is_prompts = "chosen_pixel_values" not in inputs  # online mode still evaluates on image pairs
            inputs = self.online_pairs(inputs, generator) if is_prompts else self.encode_batch(inputs)
        step, sides = self.noised_latents(inputs, generator), self._sides()
        model_pred = self.family.predict(model, step.noisy_latents, step.levels, inputs, sides)
        model_errors = denoising_errors(model_pred, step.target, step.levels.weights)  # (len(sides) * B,)
        if self.args.loss_type == "sft":
            losses = diffusion_sft_loss(model_errors)
            metrics = {"diffusion_dpo/model_mse_chosen": model_errors.detach()}
        else:
            with torch.no_grad(), self.accelerator.autocast(), self._reference(model) as reference:
                ref_pred = self.family.predict(reference, step.noisy_latents, step.levels, inputs, sides)
            ref_errors = denoising_errors(ref_pred, step.target, step.levels.weights)
            (model_w, model_l), (ref_w, ref_l) = model_errors.chunk(2), ref_errors.chunk(2)
            losses, chosen, rejected = diffusion_dpo_loss(model_w, model_l, ref_w, ref_l, beta=self.args.beta)
            chosen, rejected = chosen.detach(), rejected.detach()
            metrics = {
                "rewards/chosen": chosen, "rewards/rejected": rejected, "rewards/margins": chosen - rejected,
                "rewards/accuracies": implicit_accuracy(chosen, rejected),
                "diffusion_dpo/model_mse_chosen": model_w.detach(),
                "diffusion_dpo/model_mse_rejected": model_l.detach(),
                "diffusion_dpo/ref_mse_chosen": ref_w, "diffusion_dpo/ref_mse_rejected": ref_l,
            }  # fmt: skip
        self.record_metrics(metrics, mode)
        loss = losses.mean()
        return (loss, metrics) if return_outputs else loss

    def record_metrics(self, metrics: dict[str, torch.Tensor], mode: str, nan_safe: bool = False) -> None:
        """Gather each metric over processes and keep its mean (ignoring NaN with ``nan_safe``) for the next `log`."""
        for key, value in metrics.items():
            value = self.accelerator.gather(value.to(self.accelerator.device))
            self._step_metrics[mode][key].append((value.nanmean() if nan_safe else value.mean()).item())

    # ------------------------------------------------------------------ evaluation and logging (as TRL's DPOTrainer)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_input(inputs)
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
        metrics = {key: sum(values) / len(values) for key, values in self._step_metrics[mode].items()}
        if mode == "eval":
            metrics = {f"eval_{key}": value for key, value in metrics.items()}
        logs.update(metrics)
        super().log(logs, start_time)
        self._step_metrics[mode].clear()

    def _set_signature_columns_if_needed(self):
        if self.online:  # every column reaches the reward functions, as in GRPO
            _trl_compat.set_signature_columns(self, list(self.train_dataset.column_names or []) + DATA_COLUMNS)
        else:
            _trl_compat.set_signature_columns(self, DATA_COLUMNS + CACHED_COLUMNS)

    def _send_telemetry(self):
        return

    # ------------------------------------------------------------------ saving and loading (diffusers formats)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if self.args.should_save:
            output_dir = output_dir if output_dir is not None else self.args.output_dir
            save_denoiser(self.family, self.accelerator.unwrap_model(self.model), output_dir, self.is_peft, state_dict)
            torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call=_internal_call)
        if _internal_call or self.is_peft or not self.args.should_save:
            return
        # A full fine-tune saved by the user: the directory becomes a complete pipeline.
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        save_frozen_components(self.pipeline, self.family.denoiser_name, output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        denoiser = self.accelerator.unwrap_model(model if model is not None else self.model)
        if not load_denoiser(self.family, denoiser, resume_from_checkpoint, self.is_peft):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self):
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._load_best_model()
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    def _save_checkpoint(self, model, trial):
        model_name = (self.args.hub_model_id or os.path.basename(self.args.output_dir.rstrip("/"))).split("/")[-1]
        self.create_model_card(model_name=model_name)
        super()._save_checkpoint(model, trial)

    def generate_samples(self, prompts: list[str]) -> list:
        """Render ``prompts`` with the current denoiser (seed ``args.seed``); returns a list of PIL images."""
        return generate_samples(self, prompts)
