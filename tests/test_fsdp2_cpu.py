"""FSDP2 on the CPU: what runs here, since accelerate does not run FSDP on a CPU.

``trl-extras <cmd> --accelerate_config configs/accelerate/fsdp2.yaml`` on a machine without GPUs runs as plain
data parallel (MULTI_CPU): accelerate 1.15 enables FSDP for accelerator processes only (docs/cli.md, "Several
processes"). What FSDP2 adds, sharding every parameter over the processes and reduce-scattering the gradients, is
tested here with torch's ``fully_shard`` directly, over 2 gloo processes (tests/_fsdp2_step.py): two SFT steps of a
tiny causal LM sharded as ``fsdp2.yaml`` asks give the same parameters as the same steps unsharded on the whole batch.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trl_extras._distributed import engine_fallback_notice

REPO = Path(__file__).resolve().parent.parent
DRIVER = REPO / "tests" / "_fsdp2_step.py"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def result(tiny_lm_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp2")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_port", str(_free_port()), str(DRIVER), str(tiny_lm_path), str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    return torch.load(out / "result.pt")


def test_every_parameter_is_sharded_over_the_two_processes(result):
    assert result["world_size"] == 2
    sharding = result["sharding"]
    assert len(sharding) == result["num_parameters"]  # every parameter is a DTensor
    for name, shard in sharding.items():
        assert shard["placements"] == ["S(0)"], f"{name}: {shard}"
        assert shard["local"] * 2 == shard["full"], f"{name}: this process holds {shard['local']} of {shard['full']}"


def test_fully_shard_steps_equal_unsharded_steps(result):
    initial, sharded, reference = result["initial"], result["sharded"], result["reference"]
    assert set(sharded) == set(reference)
    update = max((reference[k] - initial[k]).abs().max().item() for k in reference)
    assert update > 1e-2, "the steps barely moved the parameters: the comparison would prove nothing"
    for name, param in reference.items():
        difference = (sharded[name] - param).abs().max().item()
        assert difference <= 1e-6, f"{name}: FSDP2 and unsharded differ by {difference:.3g}"
    torch.testing.assert_close(torch.tensor(result["losses"]), torch.tensor(result["reference_losses"]))


def test_accelerate_still_runs_fsdp_on_the_cpu_as_data_parallel(result):
    """What docs/cli.md and the CLI's notice say. When this fails, accelerate runs FSDP on a CPU: run `trl-extras sft`
    under configs/accelerate/fsdp2.yaml in a test instead, and update engine_fallback_notice and the docs."""
    assert result["accelerate_engine"] == "MULTI_CPU"


def test_the_cli_says_when_the_launch_config_engine_is_not_running(monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    notice = engine_fallback_notice("MULTI_CPU")
    assert notice is not None and notice.startswith("The accelerate config asks for FSDP, but this run is MULTI_CPU")
    assert engine_fallback_notice("FSDP") is None
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    assert engine_fallback_notice("MULTI_CPU") is None
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert "asks for DEEPSPEED, but this run is MULTI_CPU" in engine_fallback_notice("MULTI_CPU")
