"""Diffusion-DPO with `trl_extras.DiffusionDPOTrainer` (docs/diffusion_dpo.md), through trl-extras' command line.

    python examples/diffusion_dpo.py                                   # offline built-in task, configs/diffusion_dpo.yaml
    python examples/diffusion_dpo.py --use_peft                        # LoRA: reference = the UNet, adapter disabled
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml examples/diffusion_dpo.py

This is `trl-extras diffusion-dpo`: the training code is `trl_extras/scripts/diffusion_dpo.py`, every option of
`DiffusionDPOConfig` works as a flag or a YAML key, and the run ends with a before/after report on the built-in task.
"""

from pathlib import Path

from trl_extras.cli import run_example

if __name__ == "__main__":
    config = Path(__file__).resolve().parent.parent / "configs" / "diffusion_dpo.yaml"
    raise SystemExit(run_example("diffusion-dpo", config))
