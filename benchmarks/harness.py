"""Measure trainers side by side: each configuration in its own fresh Python process.

Peak memory only means something per process, so every measured configuration runs in a child process that imports
a *target* function, builds a trainer with it, trains, and reports back as JSON:

```python
# benchmarks/my_speed.py
def build_dpo(steps: int, batch_size: int):          # a target: returns a transformers/TRL Trainer, not yet trained
    ...
    return DPOTrainer(...)

results = compare(
    {"dpo": ("benchmarks/my_speed.py:build_dpo", {"steps": 20, "batch_size": 8}),
     "unlikelihood": ("benchmarks/my_speed.py:build_unlikelihood", {"steps": 20, "batch_size": 8})},
    repeats=3,
)
print(ratio_table(results, baseline="dpo"))
```

What a child measures:
- ``step_s``: wall time of each optimizer step (``on_step_begin`` to ``on_step_end``), first ``warmup_steps``
  dropped; the median is reported.
- ``median_cpu_step_s``: the same for the process's CPU time (all its threads). On a machine shared with other jobs
  it moves far less than wall time, which counts the time the process waited for a core.
- ``peak_mem_mb``: on CUDA, ``torch.cuda.max_memory_allocated``; on CPU, the process's peak resident set size
  (``ru_maxrss``) minus the resident size measured right before the target built anything, so imports are not counted.
- ``tokens_per_s``: when the trainer counts input tokens (``trainer.state.num_input_tokens_seen``) or the target's
  trainer logs ``num_tokens``, tokens per second of measured step time.
- anything the target adds: if the trainer has a ``benchmark_extras()`` method, its dict is merged in.

Configurations run interleaved (A, B, A, B, ...) so drift on a shared machine hits all of them alike. Tests never
assert on these numbers.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


def _load_target(target: str):
    location, _, function = target.rpartition(":")
    if not location or not function:
        raise ValueError(f"target must look like 'path/to/file.py:function' or 'module:function', got {target!r}")
    if location.endswith(".py"):
        path = Path(location)
        if not path.is_absolute():
            path = REPO_ROOT / path
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(location)
    return getattr(module, function)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _child(target: str, kwargs: dict[str, Any], warmup_steps: int) -> dict[str, Any]:
    import torch
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self.cpu_times: list[float] = []
            self._start = self._cpu_start = 0.0

        def on_step_begin(self, args, state, control, **kw):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self._start, self._cpu_start = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self._start)
            self.cpu_times.append(time.process_time() - self._cpu_start)

    build = _load_target(target)
    baseline_rss = _rss_mb()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer = build(**kwargs)
    timer = StepTimer()
    trainer.add_callback(timer)
    trainer.train()

    measured = timer.times[warmup_steps:] or timer.times
    result: dict[str, Any] = {
        "steps": len(timer.times),
        "step_s": measured,
        "median_step_s": statistics.median(measured),
        "median_cpu_step_s": statistics.median(timer.cpu_times[warmup_steps:] or timer.cpu_times),
        "device": torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
    }
    if torch.cuda.is_available():
        result["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        result["peak_mem_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - baseline_rss
    tokens = getattr(trainer.state, "num_input_tokens_seen", 0) or 0
    if not tokens:
        tokens = sum(float(log.get("num_tokens", 0)) for log in trainer.state.log_history[-1:])
    if tokens:
        result["tokens_per_s"] = tokens / sum(timer.times)
    if hasattr(trainer, "benchmark_extras"):
        result.update(trainer.benchmark_extras())
    return result


def training_args(config_class, output_dir: str, steps: int, batch_size: int, learning_rate: float, **kwargs):
    """A benchmarked run's trainer config: ``steps`` optimizer steps, no saving, reporting or progress bar, one log
    line at the end, bf16 on CUDA; ``kwargs`` add to or override these."""
    import torch

    settings = dict(
        bf16=torch.cuda.is_available(),
        report_to="none",
        save_strategy="no",
        logging_steps=steps,
        disable_tqdm=True,
    )
    settings.update(kwargs)
    return config_class(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        **settings,
    )


def measure_in_subprocess(
    target: str,
    kwargs: dict[str, Any] | None = None,
    *,
    warmup_steps: int = 2,
    python: str = sys.executable,
    env: dict[str, str] | None = None,
    timeout: float = 1800,
) -> dict[str, Any]:
    """Run ``target(**kwargs)`` in a fresh ``python`` process, train the trainer it returns, return the measurements.

    ``python`` may be another virtualenv's interpreter (e.g. one with an older TRL); it needs transformers and torch,
    and this file is run by path so trl-extras need not be installed there.
    """
    child_env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled", **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), child_env.get("PYTHONPATH")]))
    command = [python, str(Path(__file__).resolve()), "--child", target, json.dumps(kwargs or {}), str(warmup_steps)]
    proc = subprocess.run(command, capture_output=True, text=True, env=child_env, timeout=timeout)
    marker = "@@RESULT@@"
    lines = [line for line in proc.stdout.splitlines() if line.startswith(marker)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark target {target} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len(marker) :])


def compare(
    configurations: dict[str, tuple[str, dict[str, Any]]], repeats: int = 3, **measure_kwargs
) -> dict[str, list[dict[str, Any]]]:
    """Measure every configuration ``repeats`` times, interleaved; returns name -> list of per-run results."""
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in configurations}
    for _ in range(repeats):
        for name, (target, kwargs) in configurations.items():
            runner_kwargs = dict(measure_kwargs)
            if isinstance(kwargs, dict) and "__python__" in kwargs:
                kwargs = dict(kwargs)
                runner_kwargs["python"] = kwargs.pop("__python__")
            results[name].append(measure_in_subprocess(target, kwargs, **runner_kwargs))
    return results


def summary(runs: list[dict[str, Any]], key: str) -> tuple[float, float]:
    """Median and spread (max - min) of ``key`` over runs."""
    values = [run[key] for run in runs if key in run]
    if not values:
        return float("nan"), float("nan")
    return statistics.median(values), max(values) - min(values)


def ratio_table(results: dict[str, list[dict[str, Any]]], baseline: str, keys=("median_step_s", "peak_mem_mb")) -> str:
    """A markdown table: median (spread) of each key per configuration, and its ratio to ``baseline``."""
    header = ["configuration"]
    for key in keys:
        header += [f"{key} median (spread)", f"{key} / {baseline}"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, runs in results.items():
        cells = [name]
        for key in keys:
            median, spread = summary(runs, key)
            base, _ = summary(results[baseline], key)
            cells += [f"{median:.4g} ({spread:.2g})", f"{median / base:.2f}" if base else "n/a"]
        rows.append("| " + " | ".join(cells) + " |")
    device = next(iter(results.values()))[0].get("device", "?")
    rows.append("")
    rows.append(f"Device: {device}; {len(next(iter(results.values())))} runs per configuration.")
    return "\n".join(rows)


def main() -> None:  # child entry point
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=3, metavar=("TARGET", "KWARGS", "WARMUP"), required=True)
    args = parser.parse_args()
    target, kwargs, warmup = args.child
    result = _child(target, json.loads(kwargs), int(warmup))
    print("@@RESULT@@" + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
