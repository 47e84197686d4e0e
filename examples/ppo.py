"""PPO with `trl_extras.PPOTrainer` (docs/ppo.md), through trl-extras' command line.

    python examples/ppo.py                                     # offline built-in task, configs/ppo.yaml
    python examples/ppo.py --config configs/ppo.yaml --kl_coef 0.2 --num_mini_batches 2
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml examples/ppo.py --config configs/ppo.yaml

This is `trl-extras ppo`: the training code is `trl_extras/scripts/ppo.py`, every option of the trainer's config
works as a flag or a YAML key (plus `--value_model_name_or_path`), and the run ends with a before/after report on the
built-in task. See docs/cli.md.
"""

from pathlib import Path

from trl_extras.cli import run_example

if __name__ == "__main__":
    raise SystemExit(run_example("ppo", Path(__file__).resolve().parent.parent / "configs" / "ppo.yaml"))
