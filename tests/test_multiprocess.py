"""Several processes: 2 gloo processes = 1 process, clean exits, and launches that would train alone are refused."""

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from trl_extras import cli

REPO = Path(__file__).resolve().parent.parent
PARITY_SCRIPT = REPO / "tests" / "multiprocess_parity.py"
TRAINERS = ["sft", "reward", "dpo", "unlikelihood", "mdpo", "grpo", "rloo", "remax"]
FAST = ["--max_steps", "2", "--logging_steps", "1", "--eval_samples", "4", "--disable_tqdm", "true"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}


# ---------------------------------------------------------------------------------------------------------------------
# 2 processes x batch n = 1 process x batch 2n (plain SGD, no clipping, deterministic generation)


@pytest.fixture(scope="module")
def parity_runs(tiny_lm_path, tiny_reward_model_path, tmp_path_factory):
    """Every trainer in ``TRAINERS`` trained by tests/multiprocess_parity.py as 1 process and as 2 gloo processes
    (run side by side); ``{world_size: output directory}``."""
    from trl_extras.testing import build_tiny_vlm

    root = tmp_path_factory.mktemp("parity")
    models = root / "models"
    models.mkdir()
    (models / "lm").symlink_to(tiny_lm_path)
    (models / "rm").symlink_to(tiny_reward_model_path)
    build_tiny_vlm(models / "vlm")
    launchers = {
        1: [sys.executable],
        2: [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(_free_port()),
        ],
    }
    processes = {}
    for world_size, launcher in launchers.items():
        out = root / f"world-{world_size}"
        command = [*launcher, str(PARITY_SCRIPT), str(models), str(out), *TRAINERS]
        log = open(root / f"world-{world_size}.log", "w")  # noqa: SIM115 (closed below)
        processes[world_size] = (subprocess.Popen(command, env=_env(), stdout=log, stderr=subprocess.STDOUT), log, out)
    for world_size, (process, log, _) in processes.items():
        try:
            process.wait(timeout=900)
        finally:
            if process.poll() is None:
                process.kill()
            log.close()
        assert process.returncode == 0, (root / f"world-{world_size}.log").read_text()[-4000:]
    return {world_size: out for world_size, (_, _, out) in processes.items()}


@pytest.mark.parametrize("trainer", TRAINERS)
def test_two_gloo_processes_train_as_one(parity_runs, trainer):
    one, two = (torch.load(parity_runs[n] / f"{trainer}.pt") for n in (1, 2))
    assert (one["world_size"], two["world_size"]) == (1, 2)
    update = max((one["after"][k] - one["before"][k]).abs().max().item() for k in one["after"])
    assert update > 1e-3, "the 2 steps barely moved the parameters: the comparison would prove nothing"
    scale = max(p.abs().max().item() for p in one["after"].values())
    assert set(one["after"]) == set(two["after"])
    for name, param in one["after"].items():
        difference = (param - two["after"][name]).abs().max().item()
        assert difference <= 1e-5 * scale, f"{trainer}: {name} differs by {difference:.3g} (max |param| {scale:.3g})"
    torch.testing.assert_close(torch.tensor(one["losses"]), torch.tensor(two["losses"]), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# the CLI's launches exit cleanly (each of the two ways); --num_processes starts that many processes


@pytest.mark.parametrize(
    "launch",
    [
        ["--accelerate_config", "configs/accelerate/cpu_multiprocess.yaml"],
        ["--num_processes", "2"],
    ],
    ids=["accelerate-config", "num-processes"],
)
def test_two_process_cli_run_exits_cleanly(launch, builtin_cache, tmp_path):
    command = [
        *(sys.executable, "-m", "trl_extras.cli", "unlikelihood", "--config", "configs/unlikelihood.yaml"),
        *launch,
        *("--main_process_port", str(_free_port()), "--output_dir", str(tmp_path), *FAST),
    ]
    env = _env(TRL_EXTRAS_CACHE=str(builtin_cache), TRL_EXTRAS_EXIT_TIMEOUT="120")
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Running on 2 process(es), MULTI_CPU" in result.stdout
    assert f"Model saved to {tmp_path}" in result.stdout
    assert "had not exited" not in result.stderr


def test_num_processes_on_a_cpu_machine_uses_the_torchrun_launcher(monkeypatch):
    import accelerate.commands.launch as launch

    seen = []
    monkeypatch.setattr(
        launch, "launch_command", lambda args: seen.append((args, os.environ.get("ACCELERATE_USE_CPU")))
    )
    monkeypatch.setattr("trl_extras._distributed.has_accelerator", lambda: False)
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    status = cli.main(["dpo", "--config", str(REPO / "configs/dpo.yaml"), "--num_processes", "2"])
    assert status == 0
    ((args, use_cpu),) = seen
    assert args.num_processes == 2 and args.multi_gpu and not args.cpu and use_cpu == "true"
    assert "ACCELERATE_USE_CPU" not in os.environ  # the launch's setting, not the caller's


# ---------------------------------------------------------------------------------------------------------------------
# a process that does not exit: the launcher stops the run and says which one, with its stack


def test_exit_watchdog_stops_a_process_that_outlives_a_finished_one(tmp_path):
    sleeper = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import faulthandler, signal, sys, time\n"
            "faulthandler.register(signal.SIGUSR1, all_threads=True)\n"
            "print('ready', flush=True)\n"
            "def wait_for_a_peer():\n    time.sleep(600)\n"
            "wait_for_a_peer()\n",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert sleeper.stdout.readline().strip() == "ready"
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "rank-0.pid").write_text(finished.stdout.strip())
    (tmp_path / "rank-0.finished").write_text(finished.stdout.strip())
    (tmp_path / "rank-1.pid").write_text(str(sleeper.pid))

    watchdog = cli._ExitWatchdog(str(tmp_path), timeout=30.0, poll=0.1)
    assert watchdog.check(now=time.time()) == []  # not yet 30 s after rank 0 finished
    assert watchdog.check(now=time.time() + 31) == [("1", sleeper.pid)]  # rank 0 has exited, rank 1 has not

    watchdog = cli._ExitWatchdog(str(tmp_path), timeout=0.2, poll=0.05)
    watchdog.start()
    _, stderr = sleeper.communicate(timeout=60)
    watchdog.stop()
    assert sleeper.returncode == -15  # SIGTERM, after the stack dump
    assert "wait_for_a_peer" in stderr  # faulthandler's stack of every thread, on SIGUSR1
    assert f"rank 1 (pid {sleeper.pid}) had not exited 0.2 s after rank 0 finished" in watchdog.report
    assert cli.EXIT_TIMEOUT_ENV in watchdog.report


# ---------------------------------------------------------------------------------------------------------------------
# several launched processes that would each train alone


def test_launched_processes_without_a_process_group_are_an_error(tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2 script.py` on a CPU machine without use_cpu: both processes
    see WORLD_SIZE=2 and accelerate forms no group; the config refuses before any model loads."""
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            from trl_extras import UnlikelihoodConfig

            UnlikelihoodConfig(output_dir="unused", bf16=False, report_to="none")
            print("configured")
            """
        )
    )
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port"]
    env = _env(CUDA_VISIBLE_DEVICES="")
    env.pop("ACCELERATE_USE_CPU", None)
    result = subprocess.run(
        [*command, str(_free_port()), str(script)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0
    assert "configured" not in result.stdout
    assert "WORLD_SIZE=2: the launcher started 2 processes, but accelerate sees 1 process(es)" in result.stderr
    assert "use_cpu=True" in result.stderr


# ---------------------------------------------------------------------------------------------------------------------
# the built-in task's cache, built by whichever process gets its lock


def test_cache_entry_built_by_rank_1_holds_the_model(tmp_path):
    """transformers writes weights only on rank 0 under torch.distributed; an entry that rank 1 built (it won the lock)
    must still hold the model, not just a tokenizer marked complete."""
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            import os

            import torch.distributed as dist

            from trl_extras.tasks import sentiment

            dist.init_process_group("gloo")
            if dist.get_rank() == 1:
                sentiment.base_policy_path()  # rank 1 builds the entry
            dist.barrier()
            if dist.get_rank() == 0:
                from transformers import AutoModelForCausalLM

                path = sentiment.base_policy_path()  # complete already: rank 0 only reads it
                AutoModelForCausalLM.from_pretrained(path)
                print("loaded:", sorted(os.listdir(path)))
            dist.destroy_process_group()
            """
        )
    )
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port"]
    env = _env(TRL_EXTRAS_CACHE=str(tmp_path / "cache"))
    result = subprocess.run(
        [*command, str(_free_port()), str(script)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loaded:" in result.stdout and "model.safetensors" in result.stdout and "config.json" in result.stdout
