"""Run every ``trl-extras`` trainer for 2 steps, one after the other, in this process: the driver of
``tests/test_cli_multiprocess.py``, which launches it once as 2 gloo processes

    accelerate launch --config_file configs/accelerate/cpu_multiprocess.yaml tests/_cli_matrix_run.py OUT NAME...

Each trainer runs as ``trl_extras.cli.main([NAME, "--config", "configs/<name>.yaml", tiny overrides])``, the very call
the processes of ``trl-extras NAME --num_processes 2`` make after the relaunch, so the ten commands share one process
start-up (imports dominate a 2-step run). Per trainer and rank it writes ``OUT/NAME.rank<R>.log`` (what the command
printed) and ``OUT/NAME.rank<R>.json`` (exit status, seconds); the trained model goes to ``OUT/NAME/``.

The ten commands share one gloo process group: each command ends with ``Trainer.end()``, which destroys the group
(what a process does just before it exits); here that happens after the last command only (a group formed anew in
the same processes by the next command does not rendezvous reliably), and between two commands accelerate's
``AcceleratorState`` is reset so that the next command's trainer sets it up as a new process would. The destroy and
the processes' clean exit after it are checked by ``tests/test_multiprocess.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FAST = ["--max_steps", "2", "--logging_steps", "1", "--eval_samples", "2", "--disable_tqdm", "true"]
FAST += ["--report_to", "none", "--save_strategy", "no", "--seed", "0"]
ONLINE = ["--per_device_train_batch_size", "2", "--max_completion_length", "8"]
# Tiny batches (2 processes x the per-device size); online trainers generate 8 tokens.
OVERRIDES: dict[str, list[str]] = {
    "sft": ["--per_device_train_batch_size", "2", "--max_length", "32"],
    "reward": ["--per_device_train_batch_size", "2"],
    "dpo": ["--per_device_train_batch_size", "2"],
    "unlikelihood": ["--per_device_train_batch_size", "2"],
    "grpo": [*ONLINE, "--num_generations", "2"],
    "rloo": [*ONLINE, "--num_generations", "2"],
    "remax": ONLINE,
    "ppo": ONLINE,
    "mdpo": ["--per_device_train_batch_size", "1"],
    "diffusion-dpo": ["--per_device_train_batch_size", "1"],
}


def argv(name: str, output_dir: Path) -> list[str]:
    config = REPO / "configs" / f"{name.replace('-', '_')}.yaml"
    return [name, "--config", str(config), "--output_dir", str(output_dir), *FAST, *OVERRIDES[name]]


def _reset_accelerate() -> None:
    """Forget the accelerator's process-wide state (not the process group), as a new process would start."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


def main(out: Path, names: list[str]) -> int:
    from accelerate.state import PartialState

    from trl_extras import cli

    rank = os.environ.get("RANK", "0")
    failures = 0
    destroy = PartialState.destroy_process_group
    for index, name in enumerate(names):
        last = index == len(names) - 1
        PartialState.destroy_process_group = destroy if last else lambda self, group=None: None
        start = time.perf_counter()
        with open(out / f"{name}.rank{rank}.log", "w") as log:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                try:
                    status = cli.main(argv(name, out / name))
                except BaseException:  # noqa: BLE001 (reported in the log and the record, then the next command)
                    traceback.print_exc()
                    status = "exception"
        record = {"status": status, "seconds": round(time.perf_counter() - start, 2)}
        (out / f"{name}.rank{rank}.json").write_text(json.dumps(record))
        print(f"rank {rank}: {name} -> {record}", flush=True)
        failures += status != 0
        _reset_accelerate()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2:]))
