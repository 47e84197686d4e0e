"""SFT with TRL's stock `SFTTrainer`, through trl-extras' command line.

    python examples/sft.py                                   # offline built-in task, configs/sft.yaml
    python examples/sft.py --config configs/sft.yaml --max_steps 10
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml examples/sft.py --config configs/sft.yaml

This is `trl-extras sft`: the training code is `trl_extras/scripts/sft.py`, every option of the trainer's config
works as a flag or a YAML key, and the run ends with a before/after report on the built-in task. See docs/cli.md.
"""

from pathlib import Path

from trl_extras.cli import run_example

if __name__ == "__main__":
    raise SystemExit(run_example("sft", Path(__file__).resolve().parent.parent / "configs" / "sft.yaml"))
