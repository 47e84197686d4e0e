"""GPU check: every trainer on CUDA, a ~0.6B bf16 full fine-tune, ZeRO-3 and FSDP2, vLLM colocate, speed tables.

    bash benchmarks/gpu_check.sh                 # on a machine with one CUDA GPU: about 8 minutes on an H200
    bash benchmarks/gpu_check.sh --dry-run       # on a CPU (CI): tiny models, 2 steps, the CUDA-only parts skipped
    python benchmarks/gpu_check.py --dry-run --stages trainers --out /tmp/check   # one stage, without the wrapper

Stages, each recorded as ``ok``, ``skipped`` (with the reason) or ``failed`` (with the error), so one failure does not
hide the others:

- ``trainers``: every ``trl-extras`` subcommand (the ten of ``trl_extras.cli.SUBCOMMANDS``) on its shipped config
  and built-in task, ``--steps`` optimizer steps with QLoRA (``use_peft`` + ``load_in_4bit``), one log line per step;
  checks that every logged loss is finite and records the CUDA peak memory of each. Dry run: QLoRA where bitsandbytes
  runs on the CPU, LoRA for the diffusion pipeline (diffusers' 4-bit loader needs CUDA).
- ``full_ft``: a Llama of about 0.57B parameters (hidden 1536, 24 layers, built from its config, no download) fully
  fine-tuned in bf16 with ``trl-extras sft``. Dry run: hidden 64, 2 layers, fp32.
- ``zero3``, ``fsdp2``: the same fine-tune, and PPO on its shipped config (policy and critic prepared by the engine
  as one module), under ``configs/accelerate/zero3.yaml`` and ``fsdp2.yaml`` with one process (``accelerate launch
  --num_processes 1``). Skipped on a CPU (accelerate runs FSDP only with a GPU; ZeRO-2/3 on the CPU are tested in
  ``tests/test_ppo_engines.py``) and, for ZeRO-3, where deepspeed is not installed.
- ``vllm``: ReMax and PPO with ``use_vllm=True, vllm_mode="colocate"`` on the built-in tiny policy. Skipped where
  vLLM does not import (say why in ``reason``) and on a CPU.
- ``speed``: ``benchmarks/speed.py --preset gpu`` (one repeat, shorter completions, to fit the budget), which writes
  the ``speed-gpu`` section of ``--docs``. Dry run: ``speed.py --quick`` on the ReMax-vs-GRPO group, docs untouched.

Results go to ``<out>/gpu_check.json`` and ``<out>/gpu_check.md``; with ``--docs`` the summary table replaces the
``gpu-check`` section of that file (``docs/benchmarks.md`` by default on CUDA, nothing by default in a dry run).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parent
REPO_ROOT = BENCHMARKS.parent
sys.path.insert(0, str(BENCHMARKS))  # run by path: make the sibling scripts importable
STAGES = ("trainers", "full_ft", "zero3", "fsdp2", "vllm", "speed")
DOCS_SECTION = "gpu-check"
CONFIG_NAMES = {"diffusion-dpo": "diffusion_dpo"}  # subcommand -> configs/<name>.yaml
# Batch sizes that keep 10 steps of the trainers whose shipped configs use more small
SMALL_BATCH = {"sft": 8, "diffusion-dpo": 4, "mdpo": 4}
# Dry run on a CPU: trainers checked with LoRA instead of QLoRA, and why
CPU_LORA_ONLY = {
    "diffusion-dpo": "diffusers' 4-bit loader needs CUDA",
}


class Skip(Exception):
    """A stage that cannot run here; the message says why."""


# ---------------------------------------------------------------------------------------------------------------------
# running one CLI command and reading what it trained


@contextlib.contextmanager
def recorded_trainers():
    """Collect every ``transformers.Trainer`` whose ``train()`` runs inside the block (the CLI builds its own)."""
    import transformers

    seen: list = []
    original = transformers.Trainer.train

    def train(self, *args, **kwargs):
        seen.append(self)
        return original(self, *args, **kwargs)

    transformers.Trainer.train = train
    try:
        yield seen
    finally:
        transformers.Trainer.train = original


def run_cli(argv: list[str]) -> dict[str, Any]:
    """Run ``trl-extras <argv>`` in this process; return its exit status, losses, step count and peak memory."""
    import torch

    from trl_extras import cli

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with recorded_trainers() as trainers:
        status = cli.main(argv)
    seconds = time.perf_counter() - start
    result: dict[str, Any] = {"exit_status": status, "seconds": round(seconds, 2)}
    if trainers:
        trainer = trainers[-1]
        result["losses"] = [log["loss"] for log in trainer.state.log_history if "loss" in log]
        result["steps"] = trainer.state.global_step
        result["trainer"] = type(trainer).__name__
        model = trainer.accelerator.unwrap_model(trainer.model)
        result["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        result["params"] = sum(p.numel() for p in model.parameters())
    result["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    del trainers
    gc.collect()
    return result


def check_run(name: str, result: dict[str, Any], steps: int) -> dict[str, Any]:
    """``ok`` when the command exited 0, trained ``steps`` steps and every logged loss is finite."""
    problems = []
    if result["exit_status"] != 0:
        problems.append(f"exit status {result['exit_status']}")
    if result.get("steps") != steps:
        problems.append(f"trained {result.get('steps')} steps, expected {steps}")
    losses = result.get("losses") or []
    if not losses:
        problems.append("no loss was logged")
    elif not all(isinstance(v, (int, float)) and math.isfinite(v) for v in losses):
        problems.append(f"non-finite loss in {losses}")
    result["status"] = "failed" if problems else "ok"
    if problems:
        result["error"] = f"{name}: " + "; ".join(problems)
    return result


def launched(argv: list[str], accelerate_config: Path, out_json: Path, timeout: float) -> dict[str, Any]:
    """Run ``trl-extras <argv>`` under ``accelerate launch --num_processes 1`` and read the child's results."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(accelerate_config),
        "--num_processes",
        "1",
        str(Path(__file__).resolve()),
        "--child",
        str(out_json),
        "--",
        *argv,
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO_ROOT)
    if not out_json.exists():
        raise RuntimeError(f"exit {proc.returncode}, no result written; stderr tail:\n{proc.stderr[-3000:]}")
    result = json.loads(out_json.read_text())
    if proc.returncode != 0 and result.get("exit_status") == 0:
        result["exit_status"] = proc.returncode
    return result


# ---------------------------------------------------------------------------------------------------------------------
# the stages


class Context:
    def __init__(self, args):
        import torch

        self.args = args
        self.cuda = torch.cuda.is_available()
        self.dry_run = args.dry_run
        self.out = Path(args.out)
        self.steps = args.steps or (2 if args.dry_run else 10)
        self.deadline = time.monotonic() + args.budget_s
        self._model: str | None = None

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def common(self, name: str) -> list[str]:
        return [
            "--output_dir",
            str(self.out / "runs" / name),
            "--max_steps",
            str(self.steps),
            "--logging_steps",
            "1",
            "--save_strategy",
            "no",
            "--report_to",
            "none",
            "--eval_samples",
            "0",
            "--disable_tqdm",
            "true",
        ]

    def full_ft_model(self) -> str:
        """The full fine-tune's Llama, built once from its config (0.57B parameters on CUDA, tiny in a dry run)."""
        if self._model is None:
            from trl_extras.testing import build_tiny_causal_lm

            size = dict(hidden_size=64, num_layers=2) if self.dry_run else dict(hidden_size=1536, num_layers=24)
            heads = max(2, size["hidden_size"] // 64)
            self._model = build_tiny_causal_lm(
                self.out / "models" / "llama-full-ft",
                hidden_size=size["hidden_size"],
                intermediate_size=2 * size["hidden_size"],
                num_hidden_layers=size["num_layers"],
                num_attention_heads=heads,
                num_key_value_heads=heads,
            )
        return self._model

    def sft_argv(self, name: str) -> list[str]:
        return [
            "sft",
            "--config",
            str(REPO_ROOT / "configs" / "sft.yaml"),
            "--model_name_or_path",
            self.full_ft_model(),
            "--per_device_train_batch_size",
            "8",
            "--gradient_checkpointing",
            "false",
            "--learning_rate",
            "1e-5",
            *(["--bf16", "true"] if self.cuda else ["--bf16", "false"]),
            *self.common(name),
        ]

    def ppo_argv(self, name: str) -> list[str]:
        """PPO on its shipped config: policy and critic prepared by the engine as one module."""
        return [
            "ppo",
            "--config",
            str(REPO_ROOT / "configs" / "ppo.yaml"),
            "--per_device_train_batch_size",
            "8",
            *(["--bf16", "true"] if self.cuda else ["--bf16", "false"]),
            *self.common(name),
        ]


def stage_trainers(ctx: Context) -> dict[str, Any]:
    from trl_extras.cli import SUBCOMMANDS

    bnb = importlib.util.find_spec("bitsandbytes") is not None
    runs, notes = {}, []
    for name in SUBCOMMANDS:
        config = REPO_ROOT / "configs" / f"{CONFIG_NAMES.get(name, name)}.yaml"
        argv = [name, "--config", str(config), *ctx.common(f"trainer-{name}"), "--use_peft", "true"]
        batch = SMALL_BATCH.get(name, 4 if ctx.dry_run else 16)
        argv += ["--per_device_train_batch_size", str(batch)]
        if name in ("grpo", "rloo"):
            argv += ["--num_generations", "2" if ctx.dry_run else "4"]
        if ctx.dry_run and name in ("grpo", "rloo", "remax", "ppo"):
            argv += ["--max_completion_length", "8"]
        quantized = bnb and (ctx.cuda or name not in CPU_LORA_ONLY)
        if quantized:
            argv += ["--load_in_4bit", "true"]
        elif not ctx.cuda and name in CPU_LORA_ONLY:
            notes.append(f"{name}: LoRA, not QLoRA ({CPU_LORA_ONLY[name]})")
        elif not bnb:
            notes.append(f"{name}: LoRA, not QLoRA (bitsandbytes is not installed)")
        try:
            result = check_run(name, run_cli(argv), ctx.steps)
        except Exception as error:  # recorded; the next trainer runs
            result = {"status": "failed", "error": f"{name}: {type(error).__name__}: {error}", "peak_mem_mb": None}
            result["traceback"], result["seconds"] = traceback.format_exc()[-4000:], 0.0
        result["qlora"] = quantized
        runs[name] = result
        peak = f", peak {result['peak_mem_mb']:.0f} MiB" if result["peak_mem_mb"] is not None else ""
        print(f"[gpu_check] trainer {name}: {result['status']}, {result['seconds']:.1f} s{peak}", flush=True)
        if ctx.remaining() < 0:
            notes.append("stopped after this trainer: out of time budget")
            break
    failed = [name for name, run in runs.items() if run["status"] != "ok"]
    return {
        "status": "failed" if failed or len(runs) < len(SUBCOMMANDS) else "ok",
        "runs": runs,
        "notes": notes,
        **({"error": f"failed: {', '.join(failed)}"} if failed else {}),
    }


def stage_full_ft(ctx: Context) -> dict[str, Any]:
    result = check_run("full_ft", run_cli(ctx.sft_argv("full-ft")), ctx.steps)
    result["dtype"] = "bf16" if ctx.cuda else "fp32"
    return result


def _engine_stage(ctx: Context, name: str, config: str) -> dict[str, Any]:
    """The full fine-tune (`sft`) and PPO under one accelerate engine config, one process each."""
    if not ctx.cuda:
        raise Skip(f"{name} needs a CUDA device (accelerate falls back to MULTI_CPU without one)")
    runs = {}
    for trainer, argv in (("sft", ctx.sft_argv(name)), ("ppo", ctx.ppo_argv(f"{name}-ppo"))):
        out_json = ctx.out / f"{name}-{trainer}.json"
        out_json.unlink(missing_ok=True)
        timeout = max(60.0, min(240.0, ctx.remaining()))
        try:
            result = launched(argv, REPO_ROOT / "configs" / "accelerate" / config, out_json, timeout)
            runs[trainer] = check_run(f"{name} {trainer}", result, ctx.steps)
        except Exception as error:  # recorded; the next run goes on
            runs[trainer] = {"status": "failed", "error": f"{name} {trainer}: {type(error).__name__}: {error}"}
    failed = [trainer for trainer, run in runs.items() if run["status"] != "ok"]
    return {"status": "failed" if failed else "ok", "runs": runs, **({"error": f"failed: {failed}"} if failed else {})}


def stage_zero3(ctx: Context) -> dict[str, Any]:
    if importlib.util.find_spec("deepspeed") is None:
        raise Skip("deepspeed is not installed (PyPI ships it as a source archive only: gpu_check.sh --fetch-wheels)")
    return _engine_stage(ctx, "zero3", "zero3.yaml")


def stage_fsdp2(ctx: Context) -> dict[str, Any]:
    return _engine_stage(ctx, "fsdp2", "fsdp2.yaml")


def stage_vllm(ctx: Context) -> dict[str, Any]:
    try:
        import vllm  # noqa: F401
    except Exception as error:  # ImportError, or a vLLM that imports but cannot start
        raise Skip(f"vllm does not import here: {type(error).__name__}: {error}") from None
    if not ctx.cuda:
        raise Skip("vLLM colocate is checked on CUDA only")
    runs = {}
    for name in ("remax", "ppo"):
        argv = [
            name,
            "--config",
            str(REPO_ROOT / "configs" / f"{name}.yaml"),
            *ctx.common(f"vllm-{name}"),
            "--use_vllm",
            "true",
            "--vllm_mode",
            "colocate",
            "--vllm_gpu_memory_utilization",
            "0.2",
        ]
        out_json = ctx.out / f"vllm-{name}.json"
        out_json.unlink(missing_ok=True)
        timeout = max(60.0, min(240.0, ctx.remaining()))
        config = REPO_ROOT / "configs" / "accelerate" / "single_gpu.yaml"
        runs[name] = check_run(name, launched(argv, config, out_json, timeout), ctx.steps)
    failed = [name for name, run in runs.items() if run["status"] != "ok"]
    return {"status": "failed" if failed else "ok", "runs": runs}


def stage_speed(ctx: Context) -> dict[str, Any]:
    out = ctx.out / "speed"
    if ctx.dry_run:
        import speed

        everything = speed.main(["--quick", "--groups", "Online RL: ReMax and RLOO", "--output_dir", str(out)])
        return {"status": "ok", "groups": list(everything), "tables": str(out / "speed.md")}
    if not ctx.cuda:
        raise Skip("speed.py --preset gpu needs a CUDA device")
    timeout = ctx.remaining()
    if timeout < 60:
        raise Skip(f"out of time budget ({timeout:.0f} s left)")
    command = [sys.executable, str(BENCHMARKS / "speed.py"), "--preset", "gpu", *ctx.args.speed_args.split()]
    command += ["--output_dir", str(out)]
    if ctx.args.docs:
        command += ["--docs", str(ctx.args.docs)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"speed.py exit {proc.returncode}:\n{proc.stderr[-3000:]}")
    return {"status": "ok", "command": " ".join(command[1:]), "tables": str(out / "speed.md")}


STAGE_FUNCTIONS = {
    "trainers": stage_trainers,
    "full_ft": stage_full_ft,
    "zero3": stage_zero3,
    "fsdp2": stage_fsdp2,
    "vllm": stage_vllm,
    "speed": stage_speed,
}


# ---------------------------------------------------------------------------------------------------------------------
# report


def _fmt(value, pattern="{:.0f}") -> str:
    return "-" if value is None else pattern.format(value)


def summary_table(results: dict[str, Any]) -> str:
    lines = [
        f"Reproduce: `{results['command']}`",
        "",
        f"Device: {results['device']}; {'dry run (tiny models, CPU)' if results['dry_run'] else 'full check'}; "
        f"{results['steps']} steps per run; {results['seconds']:.0f} s in all. Versions: "
        + ", ".join(f"{k} {v}" for k, v in results["versions"].items())
        + ".",
        "",
        "| stage | run | status | steps | final loss | peak memory (MiB) | seconds | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for stage, outcome in results["stages"].items():
        runs = outcome.get("runs") or ({stage: outcome} if "exit_status" in outcome else {})
        if not runs:
            note = outcome.get("reason") or outcome.get("error", "") or outcome.get("tables", "")
            lines.append(f"| {stage} | - | {outcome['status']} | - | - | - | {outcome['seconds']:.0f} | {note} |")
        for name, run in runs.items():
            losses = run.get("losses") or [None]
            note = run.get("error", "") or ("QLoRA" if run.get("qlora") else "")
            if run.get("params") and stage != "trainers":
                note = f"{run['params'] / 1e6:.0f}M params {run.get('dtype', '')}".strip()
            lines.append(
                f"| {stage} | {name} | {run.get('status', outcome['status'])} | {_fmt(run.get('steps'))} | "
                f"{_fmt(losses[-1], '{:.4g}')} | {_fmt(run.get('peak_mem_mb'))} | {run.get('seconds', 0):.0f} | "
                f"{note.splitlines()[0] if note else ''} |"
            )
        for line in outcome.get("notes", []):
            lines.append(f"| {stage} | - | note | - | - | - | - | {line} |")
    return "\n".join(lines) + "\n"


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in (
        "torch",
        "transformers",
        "trl",
        "peft",
        "accelerate",
        "bitsandbytes",
        "diffusers",
        "deepspeed",
        "vllm",
    ):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    return found


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true", help="tiny models on a CPU")
    parser.add_argument("--out", default=None, help="results folder (default: outputs/gpu_check, or a temp dir)")
    parser.add_argument("--docs", default=None, help="markdown file whose gpu-check section to replace")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (10; dry run: 2)")
    parser.add_argument("--budget_s", type=float, default=470, help="wall-clock budget; later stages get the rest")
    parser.add_argument(
        "--speed_args",
        default="--repeats 1 --steps 5 --completion_length 64 --words 64",
        help="extra arguments for speed.py --preset gpu",
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # used by `launched`
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:  # under `accelerate launch`: run the CLI, write the results for the parent
        rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
        result = run_cli(rest)
        if int(os.environ.get("RANK", "0")) == 0:
            Path(args.child).write_text(json.dumps(result))
        return result

    import torch

    if not torch.cuda.is_available() and not args.dry_run:
        parser.error("no CUDA device here: run with --dry-run (tiny models on the CPU)")
    if args.docs is None and not args.dry_run:
        args.docs = str(REPO_ROOT / "docs" / "benchmarks.md")
    args.out = args.out or (tempfile.mkdtemp(prefix="gpu-check-") if args.dry_run else "outputs/gpu_check")
    unknown = [s for s in args.stages.split(",") if s and s not in STAGES]
    if unknown:
        parser.error(f"--stages: unknown stage(s) {unknown}; choose from {list(STAGES)}")
    ctx = Context(args)
    ctx.out.mkdir(parents=True, exist_ok=True)
    if not ctx.cuda:
        torch.set_num_threads(1)  # tiny models: one thread is as fast and does not thrash a shared machine

    started = time.perf_counter()
    device = torch.cuda.get_device_name() if ctx.cuda else f"cpu ({platform.machine()})"
    results: dict[str, Any] = {
        "command": "bash benchmarks/gpu_check.sh" + (" --dry-run" if args.dry_run else ""),
        "device": device,
        "dry_run": args.dry_run,
        "steps": ctx.steps,
        "versions": versions(),
        "stages": {},
    }
    for stage in [s for s in STAGES if s in args.stages.split(",")]:
        print(f"[gpu_check] stage {stage} ({ctx.remaining():.0f} s of budget left)", flush=True)
        begin = time.perf_counter()
        try:
            outcome = STAGE_FUNCTIONS[stage](ctx)
        except Skip as reason:
            outcome = {"status": "skipped", "reason": str(reason)}
        except Exception as error:  # recorded, and the next stage runs
            outcome = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
            outcome["traceback"] = traceback.format_exc()[-4000:]
        outcome["seconds"] = round(time.perf_counter() - begin, 1)
        results["stages"][stage] = outcome
        detail = outcome.get("reason") or outcome.get("error") or ""
        print(f"[gpu_check] stage {stage}: {outcome['status']} in {outcome['seconds']:.0f} s {detail}", flush=True)
    results["seconds"] = time.perf_counter() - started

    table = summary_table(results)
    (ctx.out / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str))
    (ctx.out / "gpu_check.md").write_text(table)
    if args.docs:
        from frontier import write_docs_section

        write_docs_section(args.docs, DOCS_SECTION, table)
    print(table, flush=True)
    return results


if __name__ == "__main__":
    outcome = main()
    sys.exit(0 if all(s["status"] != "failed" for s in outcome.get("stages", {}).values()) else 1)
