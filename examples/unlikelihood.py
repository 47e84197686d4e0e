"""Unlikelihood training with `trl_extras.UnlikelihoodTrainer` (docs/unlikelihood.md), through trl-extras' command line.

    python examples/unlikelihood.py                                   # offline built-in task, configs/unlikelihood.yaml
    python examples/unlikelihood.py --config configs/unlikelihood.yaml --max_steps 10
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml examples/unlikelihood.py --config configs/unlikelihood.yaml

This is `trl-extras unlikelihood`: the training code is `trl_extras/scripts/unlikelihood.py`, every option of the trainer's config
works as a flag or a YAML key, and the run ends with a before/after report on the built-in task. See docs/cli.md.
"""

from pathlib import Path

from trl_extras.cli import run_example

if __name__ == "__main__":
    raise SystemExit(
        run_example("unlikelihood", Path(__file__).resolve().parent.parent / "configs" / "unlikelihood.yaml")
    )
