"""ReMax with `trl_extras.ReMaxTrainer` (docs/remax.md), through trl-extras' command line.

    python examples/remax.py                                   # offline built-in task, configs/remax.yaml
    python examples/remax.py --config configs/remax.yaml --max_steps 10
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml examples/remax.py --config configs/remax.yaml

This is `trl-extras remax`: the training code is `trl_extras/scripts/remax.py`, every option of the trainer's config
works as a flag or a YAML key, and the run ends with a before/after report on the built-in task. See docs/cli.md.
"""

from pathlib import Path

from trl_extras.cli import run_example

if __name__ == "__main__":
    raise SystemExit(run_example("remax", Path(__file__).resolve().parent.parent / "configs" / "remax.yaml"))
