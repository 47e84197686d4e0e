"""Configuration for :class:`~trl_extras.trainer.diffusion_dpo_trainer.DiffusionDPOTrainer`."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

from .._distributed import check_process_group
from .._trl_compat import BaseConfig
from ..losses.diffusion_dpo import DEFAULT_BETA
from ..validation import check_config

_LOSS_TYPES = ("sigmoid", "sft")
_PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
# diffusers.training_utils' names: densities ("logit_normal", "mode"; uniform otherwise) and loss weightings
_WEIGHTING_SCHEMES = ("logit_normal", "mode", "none", "sigma_sqrt", "cosmap")


@dataclass
class DiffusionDPOConfig(BaseConfig):
    r"""
    Configuration class for the [`~trl_extras.DiffusionDPOTrainer`].

    Inherits every [`~transformers.TrainingArguments`] field with TRL's defaults (`logging_steps=10`,
    `gradient_checkpointing=True`, `bf16=True` unless `fp16`), so the usual optimiser, schedule, precision, saving,
    logging and `accelerate launch` options apply unchanged; only the fields below are added or have a different
    default.

    Parameters:
        learning_rate (`float`, *optional*, defaults to `1e-6`):
            Initial AdamW learning rate. The authors scale it with the effective batch size: 1e-8 per pair for full
            fine-tuning (2.048e-5 at their 2048 pairs); LoRA usually takes 10-100x more.

        > Diffusion-DPO objective

        beta (`float`, *optional*, defaults to `5000.0`):
            Strength of the implicit KL penalty towards the reference, the authors' `beta_dpo` (the paper's value for
            SD 1.5 and SDXL); larger keeps the model closer to the reference. Ignored when `loss_type="sft"`.
        loss_type (`str`, *optional*, defaults to `"sigmoid"`):
            `"sigmoid"`: Diffusion-DPO (the paper's equation 14). `"sft"`: the paper's supervised baseline, the
            denoising loss on the preferred images only (no reference, rejected images never encoded).
        prediction_type (`str` or `None`, *optional*, defaults to `None`):
            UNet pipelines: `"epsilon"`, `"v_prediction"` or `"sample"`; `None` reads the scheduler config. Setting it
            also updates the scheduler saved with the model.

        > Flow matching (SD3, Flux, Sana)

        weighting_scheme (`str`, *optional*, defaults to `"logit_normal"`):
            How noise levels are drawn and weighted, by `diffusers.training_utils`' names: `"logit_normal"`, `"mode"`,
            or uniform with the loss weighting `"none"`, `"sigma_sqrt"` or `"cosmap"`.
        logit_mean (`float`, *optional*, defaults to `0.0`):
            Mean of the `"logit_normal"` density.
        logit_std (`float`, *optional*, defaults to `1.0`):
            Standard deviation of the `"logit_normal"` density.
        mode_scale (`float`, *optional*, defaults to `1.29`):
            Scale of the `"mode"` density (SD3's).
        flow_shift (`float` or `None`, *optional*, defaults to `None`):
            Timestep shift `s`, `sigma <- s sigma / (1 + (s - 1) sigma)`; `None`: the family's (the scheduler's static
            `shift`, or for dynamic shifting (Flux.1-dev) `exp(mu)` at the training resolution).
        guidance_scale (`float`, *optional*, defaults to `3.5`):
            Guidance-embedding input during training, for guidance-distilled transformers (Flux.1-dev).
        max_sequence_length (`int` or `None`, *optional*, defaults to `None`):
            T5 / Gemma prompt length; `None`: the pipeline's default.

        > Online pairs (the trainer was given `reward_funcs`)

        num_generations (`int`, *optional*, defaults to `4`):
            Images sampled per prompt (at least 2); the highest- and lowest-reward ones form the pair.
        generation_num_inference_steps (`int`, *optional*, defaults to `20`):
            Denoising steps of each sampled image.
        generation_guidance_scale (`float` or `None`, *optional*, defaults to `None`):
            Classifier-free guidance scale for sampling; `None`: the pipeline's default.
        generate_with (`str`, *optional*, defaults to `"policy"`):
            Sample with the model being trained (`"policy"`) or with the reference (`"reference"`).
        reward_weights (`list[float]` or `None`, *optional*, defaults to `None`):
            Weight of each reward function in the summed reward; `None`: all 1.

        > Images

        resolution (`int` or `None`, *optional*, defaults to `None`):
            Side of the square training images in pixels; `None`: the denoiser's native size.
        center_crop (`bool`, *optional*, defaults to `True`):
            Crop the centre of each resized image, or, if `False`, a random square.
        random_flip (`bool`, *optional*, defaults to `False`):
            Mirror each training image left-right with probability 1/2 (the authors' code does).
        cache_latents (`bool`, *optional*, defaults to `False`):
            Encode every image (the VAE posterior's mean and log-variance) and caption once before training, and
            train from these; random crops and flips are then drawn once.
        ties (`str`, *optional*, defaults to `"drop"`):
            Pick-a-Pic pairs with `label_0 = 0.5`: `"drop"` (counted and logged) or `"raise"`.
        allow_size_mismatch (`bool`, *optional*, defaults to `True`):
            Allow the two images of a pair to differ in size; `False` makes such a pair an error naming the row.

        > Model loading

        model_init_kwargs (`dict` or `None`, *optional*, defaults to `None`):
            Keyword arguments for `DiffusionPipeline.from_pretrained` when `model` is a path or Hub id.

        > Sample images during training

        sample_prompts (`list[str]` or `None`, *optional*, defaults to `None`):
            Prompts rendered every `sample_steps` steps (fixed seed), saved to `<output_dir>/samples/step-<N>.png`
            and logged to Weights & Biases when `report_to` has `"wandb"`.
        sample_steps (`int`, *optional*, defaults to `500`):
            Render `sample_prompts` every this many steps.
        sample_num_inference_steps (`int`, *optional*, defaults to `25`):
            Denoising steps of each sample image.
        sample_guidance_scale (`float` or `None`, *optional*, defaults to `None`):
            Classifier-free guidance scale for sample images; `None`: the pipeline's default.
    """

    _VALID_DICT_FIELDS = BaseConfig._VALID_DICT_FIELDS + ["model_init_kwargs"]

    learning_rate: float = field(
        default=1e-6,
        metadata={
            "help": "Initial AdamW learning rate. The authors scale it with the effective batch size: 1e-8 per "
            "pair for full fine-tuning (2.048e-5 at their batch of 2048 pairs); LoRA usually takes 10-100x more."
        },
    )

    # Diffusion-DPO objective
    beta: float = field(
        default=DEFAULT_BETA,
        metadata={
            "help": "Strength of the implicit KL penalty towards the reference UNet: the authors' `beta_dpo`, used as "
            "loss = -log sigmoid(-beta/2 * ((err_w - ref_w) - (err_l - ref_l))) with errors averaged over latent "
            "elements. 5000 is the paper's value for SD 1.5 and SDXL. Larger beta keeps the model closer to the "
            "reference. Ignored when loss_type='sft'."
        },
    )
    loss_type: str = field(
        default="sigmoid",
        metadata={
            "help": "'sigmoid': Diffusion-DPO (the paper's equation 14). 'sft': the paper's supervised baseline, the "
            "plain denoising loss on the preferred images only (no reference UNet, rejected images never encoded).",
            "choices": list(_LOSS_TYPES),
        },
    )
    prediction_type: str | None = field(
        default=None,
        metadata={
            "help": "What the UNet predicts: 'epsilon', 'v_prediction' or 'sample'. None (default) reads the "
            "pipeline's scheduler config. Setting it also updates the scheduler saved with the model.",
            "choices": [None, *_PREDICTION_TYPES],
        },
    )

    # Flow matching (SD3, Flux)
    weighting_scheme: str = field(
        default="logit_normal",
        metadata={
            "help": "How flow-matching noise levels are drawn and weighted, by diffusers.training_utils' names: "
            "'logit_normal' (SD3's default: sigmoid of N(logit_mean, logit_std)), 'mode' (SD3's mode density, "
            "`mode_scale`), or uniform with the loss weighting 'none' (1), 'sigma_sqrt' (1/sigma^2) or 'cosmap'. "
            "Ignored by UNet pipelines.",
            "choices": list(_WEIGHTING_SCHEMES),
        },
    )
    logit_mean: float = field(default=0.0, metadata={"help": "Mean of the 'logit_normal' density."})
    logit_std: float = field(default=1.0, metadata={"help": "Standard deviation of the 'logit_normal' density."})
    mode_scale: float = field(default=1.29, metadata={"help": "Scale of the 'mode' density (SD3's 1.29)."})
    flow_shift: float | None = field(
        default=None,
        metadata={
            "help": "Timestep shift s applied to the drawn noise levels, sigma <- s*sigma / (1 + (s-1)*sigma). None "
            "(default): the family's own, the scheduler's static `shift` (SD3/SD3.5: 3.0; Flux.1-schnell: 1) or, "
            "where the scheduler has `use_dynamic_shifting` (Flux.1-dev), exp(mu) for the training resolution as "
            "the pipeline samples."
        },
    )
    guidance_scale: float = field(
        default=3.5,
        metadata={
            "help": "The guidance-embedding input during training, for guidance-distilled transformers (Flux.1-dev); "
            "ignored by models without a guidance embedding."
        },
    )
    max_sequence_length: int | None = field(
        default=None,
        metadata={
            "help": "T5 prompt length for SD3 and Flux (prompts are padded/truncated to it). None: the pipeline's "
            "default (SD3: 256, Flux: 512; Flux.1-schnell was trained with 256)."
        },
    )

    # Online pairs
    num_generations: int = field(
        default=4,
        metadata={
            "help": "Online mode (the trainer was given `reward_funcs`): images sampled per prompt (K >= 2); the "
            "highest- and lowest-reward ones form the pair the step trains on."
        },
    )
    generation_num_inference_steps: int = field(
        default=20, metadata={"help": "Online mode: denoising steps of each sampled image."}
    )
    generation_guidance_scale: float | None = field(
        default=None,
        metadata={"help": "Online mode: classifier-free guidance scale for sampling. None: the pipeline's default."},
    )
    generate_with: str = field(
        default="policy",
        metadata={
            "help": "Online mode: sample with the model being trained ('policy', on-policy) or with the reference "
            "('reference': the initial weights, so the pairs do not drift with training).",
            "choices": ["policy", "reference"],
        },
    )
    reward_weights: list[float] | None = field(
        default=None,
        metadata={"help": "Online mode: weight of each reward function in the summed reward. None: all 1."},
    )

    # Images
    resolution: int | None = field(
        default=None,
        metadata={
            "help": "Side of the square training images in pixels. None (default) uses the UNet's native size, "
            "unet.config.sample_size * vae_scale_factor (512 for SD 1.5, 1024 for SDXL)."
        },
    )
    center_crop: bool = field(
        default=True,
        metadata={"help": "Crop the centre of each resized image (default) or, if False, a random square."},
    )
    random_flip: bool = field(
        default=False,
        metadata={"help": "Mirror each training image left-right with probability 1/2 (the authors' code does)."},
    )
    cache_latents: bool = field(
        default=False,
        metadata={
            "help": "Before training, encode every image with the VAE (its latent mean and log-variance; a new latent "
            "is still sampled each step) and every caption with the text encoder(s), and train from these: later "
            "epochs skip the encoders. Random crops and flips are then drawn once. Costs memory/disk: per pair "
            "2 x 2C x (resolution/8)^2 + L x D floats."
        },
    )

    ties: str = field(
        default="drop",
        metadata={
            "help": "Pick-a-Pic pairs with label_0 = 0.5: 'drop' (default, as the authors; the count is logged) or "
            "'raise' (a tie is an error naming the row).",
            "choices": ["drop", "raise"],
        },
    )
    allow_size_mismatch: bool = field(
        default=True,
        metadata={
            "help": "Allow the two images of a pair to differ in size (both are resized to `resolution`; SDXL is "
            "told each original size). False: such a pair is an error naming the row."
        },
    )

    # Model loading
    model_init_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": "Keyword arguments for `DiffusionPipeline.from_pretrained` when the trainer's `model` is a path "
            "or Hub id, e.g. {'variant': 'fp16', 'revision': 'main'}."
        },
    )

    # Sample images during training
    sample_prompts: list[str] | None = field(
        default=None,
        metadata={
            "help": "Prompts to render every `sample_steps` optimizer steps with the current model (fixed seed), saved "
            "as a grid to `<output_dir>/samples/step-<N>.png` and logged to Weights & Biases when `report_to` has "
            "'wandb'. None (default): no samples."
        },
    )
    sample_steps: int = field(default=500, metadata={"help": "Render `sample_prompts` every this many steps."})
    sample_num_inference_steps: int = field(default=25, metadata={"help": "Denoising steps for each sample image."})
    sample_guidance_scale: float | None = field(
        default=None,
        metadata={"help": "Classifier-free guidance scale for sample images. None: the pipeline's default."},
    )

    def __post_init__(self):
        check_config(self)  # batch sizes, learning rate, steps, seed
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"DiffusionDPOConfig.beta must be a finite number > 0, got {self.beta}.")
        if self.loss_type not in _LOSS_TYPES:
            raise ValueError(
                f"DiffusionDPOConfig.loss_type must be one of {list(_LOSS_TYPES)}, got {self.loss_type!r}."
            )
        if self.prediction_type is not None and self.prediction_type not in _PREDICTION_TYPES:
            raise ValueError(
                f"DiffusionDPOConfig.prediction_type must be None or one of {list(_PREDICTION_TYPES)}, got "
                f"{self.prediction_type!r}."
            )
        if self.weighting_scheme not in _WEIGHTING_SCHEMES:
            raise ValueError(
                f"DiffusionDPOConfig.weighting_scheme must be one of {list(_WEIGHTING_SCHEMES)}, got "
                f"{self.weighting_scheme!r}."
            )
        if not (self.logit_std > 0 and math.isfinite(self.logit_mean)):
            raise ValueError(
                f"DiffusionDPOConfig.logit_std must be > 0 (and logit_mean finite), got logit_mean={self.logit_mean}, "
                f"logit_std={self.logit_std}."
            )
        if self.flow_shift is not None and not (math.isfinite(self.flow_shift) and self.flow_shift > 0):
            raise ValueError(f"DiffusionDPOConfig.flow_shift must be None or a number > 0, got {self.flow_shift}.")
        if self.max_sequence_length is not None and self.max_sequence_length <= 0:
            raise ValueError(
                f"DiffusionDPOConfig.max_sequence_length must be None or a positive integer, got "
                f"{self.max_sequence_length}."
            )
        if self.num_generations < 2:
            raise ValueError(
                f"DiffusionDPOConfig.num_generations must be >= 2 (a best and a worst image per prompt), got "
                f"{self.num_generations}."
            )
        if self.generation_num_inference_steps <= 0:
            raise ValueError(
                "DiffusionDPOConfig.generation_num_inference_steps must be a positive integer, got "
                f"{self.generation_num_inference_steps}."
            )
        if self.generate_with not in ("policy", "reference"):
            raise ValueError(
                f"DiffusionDPOConfig.generate_with must be 'policy' or 'reference', got {self.generate_with!r}."
            )
        if self.ties not in ("drop", "raise"):
            raise ValueError(f"DiffusionDPOConfig.ties must be 'drop' or 'raise', got {self.ties!r}.")
        if self.resolution is not None and self.resolution <= 0:
            raise ValueError(f"DiffusionDPOConfig.resolution must be a positive integer, got {self.resolution}.")
        if self.sample_steps <= 0:
            raise ValueError(f"DiffusionDPOConfig.sample_steps must be a positive integer, got {self.sample_steps}.")
        if self.sample_num_inference_steps <= 0:
            raise ValueError(
                "DiffusionDPOConfig.sample_num_inference_steps must be a positive integer, got "
                f"{self.sample_num_inference_steps}."
            )
        if isinstance(self.sample_prompts, str):
            self.sample_prompts = [self.sample_prompts]
        if self.cache_latents and (self.random_flip or not self.center_crop):
            warnings.warn(
                "DiffusionDPOConfig.cache_latents=True encodes each image once, so the random crop/flip "
                "(center_crop=False or random_flip=True) is drawn once per image, not once per epoch.",
                UserWarning,
                stacklevel=3,
            )
        super().__post_init__()
        check_process_group(self)  # several launched processes must form one group
