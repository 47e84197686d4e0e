"""Every ``trl-extras`` trainer but PPO under the shipped DeepSpeed configs, on one CPU process (DeepSpeed's CPU
accelerator, ``DS_ACCELERATOR=cpu``): configs/<name>.yaml for 2 steps.

One launch per config (``accelerate launch --config_file configs/accelerate/zero{2,3}.yaml --num_processes 1``) of
``tests/_cli_matrix_run.py``, the driver of tests/test_cli_multiprocess.py, runs the nine commands one after the other
in the same process. Per command: the run says it is on DEEPSPEED, exits 0, logs a finite loss every step, and saves a
model that reloads with no missing or unexpected key and whose weights moved. PPO under both configs is
tests/test_ppo_engines.py. Skipped when ``deepspeed`` is not installed.
"""

from __future__ import annotations

import importlib.util
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli_multiprocess import DRIVER, REPO, STEPS, _free_port, _initial_model, _largest_change, _logged_losses

from trl_extras import cli

COMMANDS = [name for name in cli.SUBCOMMANDS if name != "ppo"]
STAGES = ["zero2", "zero3"]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason="deepspeed is not installed (pip install deepspeed hjson ninja py-cpuinfo msgpack einops)",
)


@pytest.fixture(scope="module", params=STAGES)
def matrix(request, builtin_cache, tmp_path_factory):
    """(stage, output directory) of one launch under configs/accelerate/<stage>.yaml that ran every command."""
    stage = request.param
    for command in COMMANDS:  # build the built-in models before the run (the run can also build them: see below)
        _initial_model(command)
    out = tmp_path_factory.mktemp(f"cli-{stage}")
    command = [
        *(str(Path(sys.executable).parent / "accelerate"), "launch"),
        *("--config_file", str(REPO / f"configs/accelerate/{stage}.yaml")),
        *("--num_processes", "1", "--mixed_precision", "no", "--main_process_port", str(_free_port())),
        *(str(DRIVER), str(out), *COMMANDS),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TRL_EXTRAS_CACHE": str(builtin_cache)}
    env["DS_ACCELERATOR"] = "cpu"
    with open(out / "launch.log", "w") as log:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            process.wait(timeout=900)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return stage, out


def _load_checked(command: str, directory: Path, auto_class: str | None = None) -> dict:
    """The saved model as a user loads it, asserting every weight was written under its own name."""
    if command == "diffusion-dpo":
        from diffusers import UNet2DConditionModel

        model, info = UNet2DConditionModel.from_pretrained(directory / "unet", output_loading_info=True)
    else:
        import transformers

        default = {"reward": "AutoModelForSequenceClassification", "mdpo": "AutoModelForImageTextToText"}
        auto = getattr(transformers, auto_class or default.get(command, "AutoModelForCausalLM"))
        model, info = auto.from_pretrained(directory, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], f"`trl-extras {command}` saved {info}"
    return model.state_dict()


def _initial_state(command: str) -> dict:
    path = Path(_initial_model(command))
    if command == "diffusion-dpo":
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel.from_pretrained(path / "unet").state_dict()
    import transformers

    auto = {"mdpo": "AutoModelForImageTextToText"}.get(command, "AutoModelForCausalLM")  # reward: its backbone
    return getattr(transformers, auto).from_pretrained(path).state_dict()


@pytest.mark.parametrize("command", COMMANDS)
def test_every_trainer_runs_under_deepspeed_on_one_cpu_process(matrix, command):
    stage, out = matrix
    log_path = out / f"{command}.rank0.log"
    log = log_path.read_text() if log_path.exists() else "(no log: the launch never reached this command)"
    record = out / f"{command}.rank0.json"
    tail = log[-6000:] + "\n--- launch log ---\n" + (out / "launch.log").read_text()[-3000:]
    assert record.exists() and '"status": 0' in record.read_text(), f"`trl-extras {command}` under {stage}:\n{tail}"
    assert "Running on 1 process(es), DEEPSPEED" in log, tail

    losses = _logged_losses(log)
    assert len(losses) == STEPS, f"expected a loss logged at each of the {STEPS} steps, found {losses}"
    assert all(math.isfinite(loss) for loss in losses), losses

    if command in ("mdpo", "diffusion-dpo"):  # their report runs `Trainer.evaluate`, refused before `train`
        assert "before/after report skipped under DeepSpeed" in log, tail
    else:  # measured on the whole model, also under ZeRO-3 (weights gathered)
        assert "before training:" in log and "-> after" in log, tail

    assert f"Model saved to {out / command}." in log
    change = _largest_change(_load_checked(command, out / command), _initial_state(command))
    assert change > 1e-6, f"`trl-extras {command}` under {stage}: the saved weights equal the initial ones"
