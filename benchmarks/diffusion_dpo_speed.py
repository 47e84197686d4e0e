"""Step time and peak memory of DiffusionDPOTrainer's reference: LoRA with the adapter disabled vs a second denoiser.

    python benchmarks/diffusion_dpo_speed.py                          # tiny pipeline (CPU friendly)
    python benchmarks/diffusion_dpo_speed.py --size small             # a 23M-parameter UNet (CPU)
    python benchmarks/diffusion_dpo_speed.py --size sd15 --bf16       # SD 1.5-sized UNet from config, 512 px (GPU)
    python benchmarks/diffusion_dpo_speed.py --family sd3             # tiny SD3 / flux / sana pipeline (flow matching)

Configurations, each trained in its own subprocess (``benchmarks/harness.py``), interleaved, ``--repeats`` times:

- ``lora_disabled_adapter``: LoRA on the UNet; the reference pass is the same UNet with its adapters disabled (what
  ``DiffusionDPOTrainer`` does). One UNet in memory.
- ``lora_two_unets`` (the baseline): the same LoRA training, but the reference is a second, frozen copy of the base
  denoiser (as a script that keeps ``ref_unet = UNet2DConditionModel.from_pretrained(...)`` does; for ``--family
  sd3/flux/sana`` it is the base transformer, loaded the same way).
- ``full_two_unets``: full fine-tuning with its frozen reference copy, for scale.

All three run the same two UNet forwards per step, each over the concatenated ``[preferred; dispreferred]`` batch
(with gradients for the model, under ``torch.no_grad()`` for the reference), and one backward. The disabled-adapter
reference saves the second UNet's weights; its forward skips the LoRA branches. Latents and text embeddings are
cached (``cache_latents=True``) so the VAE and text encoder do not blur the comparison.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run by path: make `harness` importable

from harness import compare, ratio_table, training_args  # noqa: E402

THIS_FILE = str(Path(__file__).resolve())


def build(
    mode: str,
    pipeline_path: str,
    resolution: int,
    steps: int,
    batch_size: int,
    output_dir: str,
    bf16: bool,
    max_sequence_length: int | None = None,
):
    """A DiffusionDPOTrainer, not yet trained, for one configuration (runs in the benchmark's child process)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from PIL import Image

    from trl_extras import DiffusionDPOConfig, DiffusionDPOTrainer

    class TwoUNetLoRATrainer(DiffusionDPOTrainer):
        """The baseline: LoRA training whose reference is a separate frozen copy of the base denoiser."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            denoiser_class, subfolder = type(self.family.denoiser), self.family.denoiser_name
            reference = denoiser_class.from_pretrained(pipeline_path, subfolder=subfolder)
            self.ref_model = reference.requires_grad_(False).eval().to(self.accelerator.device, self._frozen_dtype())

    red = Image.new("RGB", (resolution, resolution), (220, 30, 30))
    blue = Image.new("RGB", (resolution, resolution), (30, 30, 220))
    dataset = Dataset.from_list([{"caption": "a red square", "chosen": red, "rejected": blue}] * batch_size)
    args = training_args(
        DiffusionDPOConfig,
        output_dir,
        steps,
        batch_size,
        1e-5,
        cache_latents=True,
        gradient_checkpointing=False,
        bf16=bf16,
        logging_steps=1000,
        dataloader_pin_memory=torch.cuda.is_available(),
        resolution=resolution,
        max_sequence_length=max_sequence_length,
    )
    lora = LoraConfig(r=16, lora_alpha=16, init_lora_weights="gaussian")
    if mode == "lora_disabled_adapter":
        trainer = DiffusionDPOTrainer(pipeline_path, args=args, train_dataset=dataset, peft_config=lora)
    elif mode == "lora_two_unets":
        trainer = TwoUNetLoRATrainer(pipeline_path, args=args, train_dataset=dataset, peft_config=lora)
    else:
        trainer = DiffusionDPOTrainer(pipeline_path, args=args, train_dataset=dataset)
    trainer.benchmark_extras = lambda: {"denoiser_mb": _denoiser_mb(trainer)}
    return trainer


def _denoiser_mb(trainer) -> float:
    """Megabytes of denoiser parameters the trainer holds: the trained one and, if any, its reference copy."""
    modules = [trainer.model] + ([trainer.ref_model] if trainer.ref_model is not None else [])
    tensors = {p.data_ptr(): p.numel() * p.element_size() for module in modules for p in module.parameters()}
    return sum(tensors.values()) / 2**20


def build_pipeline(size: str, directory: str) -> str:
    """The tiny pipeline, or the tiny pipeline with a bigger, randomly initialised UNet:

    - ``small``: SD 1.5's UNet layout at a fifth of its width and one layer per block (block widths 64-256, about
      23M parameters), on the tiny VAE and text encoder (32 px images).
    - ``sd15``: SD 1.5's UNet config (860M parameters), a small VAE with SD's 8x downsampling (512 px images ->
      4 x 64 x 64 latents) and a one-layer CLIP text encoder of SD 1.5's width 768.

    Only the UNet's size matters for this benchmark.
    """
    import torch
    from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    from trl_extras.testing import build_tiny_diffusion_pipeline
    from trl_extras.testing._diffusion import _calibrate_vae, _text_encoder_config

    tiny = build_tiny_diffusion_pipeline(f"{directory}-tiny")
    if size == "tiny":
        return tiny
    pipe = DiffusionPipeline.from_pretrained(tiny)
    torch.manual_seed(0)
    if size == "small":
        pipe.unet = UNet2DConditionModel(
            sample_size=16, cross_attention_dim=32, block_out_channels=(64, 128, 256, 256), layers_per_block=1
        )
    else:
        pipe.unet = UNet2DConditionModel(  # stable-diffusion-v1-5's unet/config.json
            sample_size=64, cross_attention_dim=768, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2
        )
        pipe.text_encoder = CLIPTextModel(
            _text_encoder_config(pipe.tokenizer, hidden_size=768, num_attention_heads=12, num_hidden_layers=1)
        )
        pipe.vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(16, 32, 32, 32),
            latent_channels=4,
            norm_num_groups=8,
            sample_size=512,
        )
        _calibrate_vae(pipe.vae, resolution=64)
    pipe.register_modules(unet=pipe.unet, text_encoder=pipe.text_encoder, vae=pipe.vae)
    pipe.save_pretrained(directory)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", choices=["tiny", "small", "sd15"])
    parser.add_argument(
        "--family", default="sd", choices=["sd", "sd3", "flux", "sana"], help="tiny pipeline family (with --size tiny)"
    )
    parser.add_argument("--batch_size", type=int, default=4, help="pairs per step")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="trl-extras-bench-diffusion-dpo-")
    if args.family != "sd":
        import trl_extras.testing as testing

        if args.size != "tiny":
            parser.error("--family sd3/flux/sana builds the tiny pipelines only (--size tiny)")
        pipeline_path = getattr(testing, f"build_tiny_{args.family}_pipeline")(f"{workdir}/{args.family}")
    else:
        pipeline_path = build_pipeline(args.size, f"{workdir}/{args.size}")
    common = dict(
        pipeline_path=pipeline_path, resolution=512 if args.size == "sd15" else 32, steps=args.steps, batch_size=args.batch_size, output_dir=f"{workdir}/out",
        bf16=args.bf16, max_sequence_length=None if args.family == "sd" else 16,
    )  # fmt: skip
    configurations = {
        mode: (f"{THIS_FILE}:build", {"mode": mode, **common})
        for mode in ("lora_two_unets", "lora_disabled_adapter", "full_two_unets")
    }
    results = compare(configurations, repeats=args.repeats)
    model = f"{args.size} UNet" if args.family == "sd" else f"tiny {args.family} transformer"
    print(f"Diffusion-DPO, {model}, {args.batch_size} pairs per step, {args.steps} steps (first 2 dropped)")
    print(ratio_table(results, baseline="lora_two_unets", keys=("median_step_s", "peak_mem_mb", "denoiser_mb")))


if __name__ == "__main__":
    main()
