"""mDPO with `trl_extras.MDPOTrainer` on a vision-language model (docs/mdpo.md), through trl-extras' command line.

    python examples/mdpo.py                                   # offline built-in task, configs/mdpo.yaml
    python examples/mdpo.py --config configs/mdpo.yaml --max_steps 10
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml examples/mdpo.py --config configs/mdpo.yaml

This is `trl-extras mdpo`: the training code is `trl_extras/scripts/mdpo.py`, every option of the trainer's config
works as a flag or a YAML key, and the run ends with a before/after report on the built-in task. See docs/cli.md.
"""

from pathlib import Path

from trl_extras.cli import run_example

if __name__ == "__main__":
    raise SystemExit(run_example("mdpo", Path(__file__).resolve().parent.parent / "configs" / "mdpo.yaml"))
