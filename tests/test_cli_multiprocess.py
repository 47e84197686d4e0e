"""Every ``trl-extras`` trainer, as a user runs it, on 2 gloo processes: configs/<name>.yaml for 2 steps.

One launch (``accelerate launch --config_file configs/accelerate/cpu_multiprocess.yaml``) of ``tests/_cli_matrix_run.py``
runs the ten commands one after the other in the same 2 processes (process start-up dominates a 2-step run), each
through ``trl_extras.cli.main``, what ``trl-extras <name> --num_processes 2`` runs in each process after relaunching.
Per command this checks what a user looks at: the run says it is on 2 processes, exits 0, logs a finite loss every
step, and saves a model that loads and whose weights moved from the ones it started from. That 2 processes train as 1
is checked by tests/test_multiprocess.py and tests/test_ppo_parity.py.
"""

from __future__ import annotations

import ast
import json
import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from trl_extras import cli

REPO = Path(__file__).resolve().parent.parent
DRIVER = REPO / "tests" / "_cli_matrix_run.py"
COMMANDS = list(cli.SUBCOMMANDS)
STEPS = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _initial_model(command: str) -> str:
    from trl_extras.tasks import registry

    config = yaml.safe_load((REPO / "configs" / f"{command.replace('-', '_')}.yaml").read_text())
    return registry.resolve_builtin_model(config["model_name_or_path"])


@pytest.fixture(scope="module")
def matrix(builtin_cache, tmp_path_factory):
    """The output directory of one 2-process launch that ran every command."""
    for command in COMMANDS:  # build the built-in models once, here, before two processes want them
        _initial_model(command)
    out = tmp_path_factory.mktemp("cli-matrix")
    command = [
        *(str(Path(sys.executable).parent / "accelerate"), "launch"),
        *("--config_file", str(REPO / "configs/accelerate/cpu_multiprocess.yaml")),
        *("--main_process_port", str(_free_port()), str(DRIVER), str(out), *COMMANDS),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TRL_EXTRAS_CACHE": str(builtin_cache)}
    with open(out / "launch.log", "w") as log:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            process.wait(timeout=900)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the launcher and both processes
            process.wait()
    return out


def _record(out: Path, command: str, rank: int) -> tuple[dict | None, str]:
    record, log = out / f"{command}.rank{rank}.json", out / f"{command}.rank{rank}.log"
    text = log.read_text() if log.exists() else "(no log: the launch never reached this command)\n"
    text += "\n--- launch log ---\n" + (out / "launch.log").read_text()[-3000:]
    return (json.loads(record.read_text()) if record.exists() else None), text


def _logged_losses(log: str) -> list[float]:
    """The ``loss`` of every step's logs, as the Trainer printed them (``{'loss': '0.6931', ...}``)."""
    losses = []
    for line in log.splitlines():
        if line.startswith("{") and "'loss'" in line:
            losses.append(float(ast.literal_eval(line)["loss"]))
    return losses


def _load(command: str, directory: Path, auto_class: str | None = None) -> dict[str, torch.Tensor]:
    """A model loaded as a user would, as a state dict (the trained module's: the UNet of a diffusion pipeline)."""
    if command == "diffusion-dpo":
        from diffusers import DiffusionPipeline

        return DiffusionPipeline.from_pretrained(directory).unet.state_dict()
    import transformers

    default = {"reward": "AutoModelForSequenceClassification", "mdpo": "AutoModelForImageTextToText"}
    auto = getattr(transformers, auto_class or default.get(command, "AutoModelForCausalLM"))
    return auto.from_pretrained(directory).state_dict()


def _largest_change(trained: dict, initial: dict) -> float:
    shared = [k for k in trained if k in initial and trained[k].shape == initial[k].shape]
    assert len(shared) >= len(trained) // 2, (
        f"the saved model shares few weights with its start: {sorted(trained)[:5]}"
    )
    return max((trained[k].float() - initial[k].float()).abs().max().item() for k in shared)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_trainer_runs_on_two_gloo_processes(matrix, command):
    for rank in (0, 1):
        record, log = _record(matrix, command, rank)
        assert record is not None and record["status"] == 0, f"`trl-extras {command}` rank {rank}:\n{log[-6000:]}"
    _, log = _record(matrix, command, 0)
    assert "Running on 2 process(es), MULTI_CPU" in log
    assert "Running on" not in _record(matrix, command, 1)[1].split("--- launch log ---")[0]  # main process prints

    losses = _logged_losses(log)
    assert len(losses) == STEPS, f"expected a loss logged at each of the {STEPS} steps, found {losses}"
    assert all(math.isfinite(loss) for loss in losses), losses

    directory = matrix / command
    assert f"Model saved to {directory}." in log
    # the start: the built-in model of the config (for the reward model and PPO's critic, its backbone: `model.*`)
    initial = _load(command, Path(_initial_model(command)), "AutoModelForCausalLM" if command == "reward" else None)
    change = _largest_change(_load(command, directory), initial)
    assert change > 1e-6, f"`trl-extras {command}`: the saved weights equal the initial ones"
    if command == "ppo":  # the critic is saved beside the policy, built from the policy's backbone
        critic = _load(command, directory / "value_model", "AutoModelForSequenceClassification")
        assert _largest_change(critic, initial) > 1e-6, "the saved value model equals the backbone it started from"
