"""GRPO with TRL's stock `GRPOTrainer`, through trl-extras' command line.

    python examples/grpo.py                                   # offline built-in task, configs/grpo.yaml
    python examples/grpo.py --config configs/grpo.yaml --max_steps 10
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml examples/grpo.py --config configs/grpo.yaml

This is `trl-extras grpo`: the training code is `trl_extras/scripts/grpo.py`, every option of the trainer's config
works as a flag or a YAML key, and the run ends with a before/after report on the built-in task. See docs/cli.md.
"""

from pathlib import Path

from trl_extras.cli import run_example

if __name__ == "__main__":
    raise SystemExit(run_example("grpo", Path(__file__).resolve().parent.parent / "configs" / "grpo.yaml"))
