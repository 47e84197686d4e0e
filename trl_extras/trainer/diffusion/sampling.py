"""Sample images while `DiffusionDPOTrainer` trains: ``args.sample_prompts`` rendered every ``args.sample_steps``."""

from __future__ import annotations

import os

import torch
from transformers import TrainerCallback

__all__ = ["SampleImagesCallback", "generate_samples"]


@torch.no_grad()
def generate_samples(trainer, prompts: list[str]) -> list:
    """Render ``prompts`` with the trainer's current denoiser (seed ``args.seed``); returns a list of PIL images."""
    args = trainer.args
    denoiser = trainer.accelerator.unwrap_model(trainer.model)
    was_training = denoiser.training
    denoiser.eval()
    kwargs = {"num_inference_steps": args.sample_num_inference_steps, **trainer.family.sample_kwargs()}
    if args.sample_guidance_scale is not None:
        kwargs["guidance_scale"] = args.sample_guidance_scale
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    trainer.pipeline.set_progress_bar_config(disable=True)
    try:
        with trainer.accelerator.autocast():
            images = trainer.pipeline(
                prompts, generator=generator, height=trainer.resolution, width=trainer.resolution, **kwargs
            ).images
    finally:
        denoiser.train(was_training)
    return images


class SampleImagesCallback(TrainerCallback):
    """Every ``args.sample_steps`` steps, render ``args.sample_prompts`` with the model being trained.

    The images go, as one grid, to ``<output_dir>/samples/step-<N>.png``, and to Weights & Biases (one image per
    prompt, key ``diffusion_dpo/samples``) when a wandb run is active. Only the main process renders.
    """

    def __init__(self, trainer):
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
