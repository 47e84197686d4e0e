"""Online pairs for `DiffusionDPOTrainer`: sample K images per prompt, score them, keep the best versus the worst."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from ...losses.diffusion_dpo import best_and_worst

if TYPE_CHECKING:
    from ..diffusion_dpo_config import DiffusionDPOConfig

__all__ = ["check_online", "sample_online_pairs", "sampling_denoiser"]


@contextlib.contextmanager
def sampling_denoiser(trainer) -> Iterator[None]:
    """The pipeline's denoiser, in eval mode, set to the policy or (``generate_with="reference"``) the reference."""
    denoiser = trainer.accelerator.unwrap_model(trainer.model)
    was_training, name = denoiser.training, trainer.family.denoiser_name
    denoiser.eval()
    try:
        if trainer.args.generate_with == "policy":
            yield
        elif trainer.ref_model is None:
            with trainer._reference(trainer.model):
                yield
        else:
            setattr(trainer.pipeline, name, trainer.ref_model)
            try:
                yield
            finally:
                setattr(trainer.pipeline, name, denoiser)
    finally:
        denoiser.train(was_training)


@torch.no_grad()
def sample_online_pairs(
    trainer, inputs: dict[str, Any], generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """Prompts -> a batch of best-versus-worst pairs: sample ``K = args.num_generations`` images per prompt,
    score them with the reward functions, keep the highest- and lowest-reward latents of each prompt. Returns
    what `encode_batch` does, with ``chosen_latents``/``rejected_latents`` ``(P, C, h, w)`` (the sampled latents
    themselves, so no VAE round trip) in place of the latent distributions."""
    prompts, extra = list(inputs["caption"]), dict(inputs.get("reward_kwargs") or {})
    args, mode = trainer.args, "train" if trainer.model.training else "eval"
    k = args.num_generations
    kwargs = dict(trainer.family.sample_kwargs())
    if args.generation_guidance_scale is not None:
        kwargs["guidance_scale"] = args.generation_guidance_scale
    trainer.pipeline.set_progress_bar_config(disable=True)
    with sampling_denoiser(trainer), trainer.accelerator.autocast():
        output = trainer.pipeline(
            prompts, num_images_per_prompt=k, num_inference_steps=args.generation_num_inference_steps,
            height=trainer.resolution, width=trainer.resolution, generator=generator, output_type="latent", **kwargs,
        ).images  # fmt: skip
        latents = trainer.family.generated_latents(output, trainer.resolution).float()  # (P * K, C, h, w)
        images = trainer.family.decode_latents(latents)
    repeated = [prompt for prompt in prompts for _ in range(k)]
    columns = {key: [value for value in values for _ in range(k)] for key, values in extra.items()}
    per_function = []
    for function in trainer.reward_funcs:
        scores = function(prompts=repeated, completions=images, trainer_state=trainer.state, **columns)
        per_function.append(torch.tensor([float("nan") if x is None else x for x in scores], dtype=torch.float32))
    weights = torch.tensor(args.reward_weights or [1.0] * len(per_function))
    stacked = torch.stack(per_function, dim=1)  # (P * K, number of reward functions)
    rewards = (stacked * weights).nansum(dim=1).view(len(prompts), k)
    best, worst = best_and_worst(rewards)
    rows = torch.arange(len(prompts))
    latents = latents.view(len(prompts), k, *latents.shape[1:]).to(trainer.accelerator.device)
    encoded = {"chosen_latents": latents[rows, best], "rejected_latents": latents[rows, worst]}
    with trainer.accelerator.autocast():
        encoded.update(
            trainer.family.encode_conditioning(
                {"caption": prompts}, trainer._sides(), trainer.resolution, trainer.accelerator.device
            )
        )
    metrics = {
        "online/chosen_reward": rewards[rows, best],
        "online/rejected_reward": rewards[rows, worst],
        "online/reward_mean": rewards.mean(dim=1),
        "online/reward_std": rewards.std(dim=1),
    }
    for function, scores in zip(trainer.reward_funcs, per_function):
        metrics[f"online/rewards/{getattr(function, '__name__', type(function).__name__)}"] = scores
    trainer.record_metrics(metrics, mode, nan_safe=True)  # a reward function may return None (NaN)
    return encoded


def check_online(reward_funcs: Any, args: DiffusionDPOConfig) -> list:
    """The trainer's ``reward_funcs`` (``None``, one function or several) as a list, checked against ``args`` when
    there are any (online mode)."""
    if reward_funcs is not None and not isinstance(reward_funcs, (list, tuple)):
        reward_funcs = [reward_funcs]
    reward_funcs = list(reward_funcs or [])
    if not reward_funcs:
        return reward_funcs
    for index, function in enumerate(reward_funcs):
        if not callable(function):
            raise TypeError(
                f"reward_funcs[{index}] must be a callable f(prompts, completions, **kwargs) -> list[float] (TRL's GRPO "
                f"reward signature over PIL images), got {type(function).__name__}."
            )
    if args.reward_weights is not None and len(args.reward_weights) != len(reward_funcs):
        raise ValueError(
            f"DiffusionDPOConfig.reward_weights has {len(args.reward_weights)} weights for {len(reward_funcs)} "
            "reward functions: give one per function."
        )
    if args.loss_type == "sft":
        raise ValueError("Online pairs (`reward_funcs`) train Diffusion-DPO; loss_type='sft' has no rejected image.")
    if args.cache_latents:
        raise ValueError(
            "DiffusionDPOConfig.cache_latents=True has nothing to cache with `reward_funcs`: online pairs are sampled "
            "fresh at every step. Set cache_latents=False."
        )
    return reward_funcs
