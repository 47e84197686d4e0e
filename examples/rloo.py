"""RLOO with TRL's stock `RLOOTrainer`, through trl-extras' command line.

    python examples/rloo.py                                   # offline built-in task, configs/rloo.yaml
    python examples/rloo.py --config configs/rloo.yaml --max_steps 10
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml examples/rloo.py --config configs/rloo.yaml

This is `trl-extras rloo`: the training code is `trl_extras/scripts/rloo.py`, every option of the trainer's config
works as a flag or a YAML key, and the run ends with a before/after report on the built-in task. See docs/cli.md.
"""

from pathlib import Path

from trl_extras.cli import run_example

if __name__ == "__main__":
    raise SystemExit(run_example("rloo", Path(__file__).resolve().parent.parent / "configs" / "rloo.yaml"))
