"""Reward modelling with TRL's stock `RewardTrainer`, through trl-extras' command line.

    python examples/reward.py                                   # offline built-in task, configs/reward.yaml
    python examples/reward.py --config configs/reward.yaml --max_steps 10
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml examples/reward.py --config configs/reward.yaml

This is `trl-extras reward`: the training code is `trl_extras/scripts/reward.py`, every option of the trainer's config
works as a flag or a YAML key, and the run ends with a before/after report on the built-in task. See docs/cli.md.
"""

from pathlib import Path

from trl_extras.cli import run_example

if __name__ == "__main__":
    raise SystemExit(run_example("reward", Path(__file__).resolve().parent.parent / "configs" / "reward.yaml"))
