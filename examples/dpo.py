"""DPO with TRL's stock `DPOTrainer`, through trl-extras' command line.

    python examples/dpo.py                                   # offline built-in task, configs/dpo.yaml
    python examples/dpo.py --config configs/dpo.yaml --max_steps 10
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml examples/dpo.py --config configs/dpo.yaml

This is `trl-extras dpo`: the training code is `trl_extras/scripts/dpo.py`, every option of the trainer's config
works as a flag or a YAML key, and the run ends with a before/after report on the built-in task. See docs/cli.md.
"""

from pathlib import Path

from trl_extras.cli import run_example

if __name__ == "__main__":
    raise SystemExit(run_example("dpo", Path(__file__).resolve().parent.parent / "configs" / "dpo.yaml"))
