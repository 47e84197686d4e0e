"""Checks on how the processes of a run were launched: one place, called by every trainer's config and the CLI.

A launcher (``accelerate launch``, ``torchrun``) that starts several processes sets ``WORLD_SIZE`` in each of them.
If accelerate then forms no process group (on a machine without GPUs it only forms a CPU (gloo) group when
``use_cpu`` is set), each process trains its own copy of the model on the whole dataset and saves over the others'
output, without a word. :func:`check_process_group` turns that into an error before any model is loaded.
"""

from __future__ import annotations

import contextlib
import os

__all__ = ["LaunchError", "check_process_group", "has_accelerator", "without_zero3_init"]


class LaunchError(ValueError):
    """The processes of a run were launched in a way that cannot train as one run."""


def has_accelerator() -> bool:
    """Whether torch sees a GPU (or another accelerator) on this machine."""
    import torch

    if torch.cuda.is_available():
        return True
    return hasattr(torch, "accelerator") and torch.accelerator.current_accelerator() is not None


def launched_world_size() -> int:
    """The number of processes the launcher started (``WORLD_SIZE``; 1 without a launcher)."""
    value = os.environ.get("WORLD_SIZE", "").strip()
    try:
        return int(value) if value else 1
    except ValueError:
        raise LaunchError(f"WORLD_SIZE: expected a whole number of processes, got {value!r}") from None


def check_process_group(args) -> None:
    """Raise :class:`LaunchError` if the launcher started several processes that accelerate does not join into one.

    ``args`` is the run's ``TrainingArguments`` (any TRL or trl-extras config); its device setup (accelerate's
    ``PartialState``) is done here if it has not been yet. Nothing is checked, and nothing set up, in a process started
    without a launcher.
    """
    world_size = launched_world_size()
    if world_size <= 1:
        return
    _ = args.device  # sets up accelerate's PartialState from use_cpu and the environment, once
    state = args.distributed_state
    num_processes = state.num_processes if state is not None else 1
    if num_processes == world_size:
        return
    distributed_type = getattr(getattr(state, "distributed_type", None), "value", "NO")
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    if not has_accelerator() and deepspeed:
        fix = (
            "This machine has no GPU and the launch asks for DeepSpeed: set `ddp_backend='gloo'` in the training "
            "arguments (`--ddp_backend gloo`) and `DS_ACCELERATOR=cpu`, so that accelerate counts the CPU group "
            "DeepSpeed forms (`use_cpu` would turn DeepSpeed off); `trl-extras <trainer>` does this for you."
        )
    elif not has_accelerator():
        fix = (
            "This machine has no GPU: set `use_cpu=True` in the training arguments (`--use_cpu true` on the command "
            "line, `use_cpu: true` in a trl-extras YAML) or `ACCELERATE_USE_CPU=true` in the environment, so that "
            "the processes form one CPU (gloo) group; `trl-extras <trainer> --num_processes N` does this for you."
        )
    else:
        fix = (
            "Check the launcher's settings (accelerate's `distributed_type`, `num_processes`, `gpu_ids`) and that "
            "every process sees its device."
        )
    raise LaunchError(
        f"WORLD_SIZE={world_size}: the launcher started {world_size} processes, but accelerate sees "
        f"{num_processes} process(es) here (distributed type {distributed_type}), so each process would train its "
        f"own copy of the model on the whole dataset. {fix}"
    )


# The engine an ``accelerate launch`` config asked for (the variable accelerate's launcher sets in every process) ->
# the DistributedType that engine runs as.
_REQUESTED_ENGINES = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DEEPSPEED"}


def engine_fallback_notice(distributed_type: str) -> str | None:
    """A line saying that the launch config's FSDP / DeepSpeed engine is not running, or ``None`` when it is.

    accelerate 1.15 turns FSDP on only for processes on accelerators (``AcceleratorState.__init__``,
    ``accelerate/state.py`` line 986: ``MULTI_GPU``, ``MULTI_XPU``, ... but not ``MULTI_CPU``) and starts DeepSpeed
    only without ``use_cpu`` (line 201: ``if not cpu``); otherwise the processes run as plain data-parallel copies
    (``MULTI_CPU``, gloo), each holding the whole model, and accelerate says nothing. ``distributed_type`` is the
    run's ``AcceleratorState().distributed_type.value``.
    """
    reasons = {
        "FSDP": "accelerate runs FSDP on GPUs (and other accelerators) only",
        "DEEPSPEED": (
            "accelerate starts DeepSpeed only without `use_cpu` (`ACCELERATE_USE_CPU`); on a CPU-only machine leave it "
            "unset and pass `--ddp_backend gloo` with `DS_ACCELERATOR=cpu` (`trl-extras` does so for its commands)"
        ),
    }
    for variable, engine in _REQUESTED_ENGINES.items():
        if os.environ.get(variable, "false").lower() == "true" and distributed_type != engine:
            return (
                f"The accelerate config asks for {engine}, but this run is {distributed_type}: {reasons[engine]}, so "
                "each process holds and trains the whole model (data parallel). See docs/cli.md, 'Several devices'."
            )
    return None


@contextlib.contextmanager
def without_zero3_init():
    """Build or load models whole, also inside a DeepSpeed ZeRO-3 run.

    Once a run's ``TrainingArguments`` name a ZeRO-3 config, transformers builds every model under
    ``deepspeed.zero.Init``: its weights partitioned, empty on this process until an engine gathers them. Two kinds of
    model never enter the engine and must be whole: a built-in model built into the cache during the run (it would
    save empty weights, and every later run fail with ``size mismatch ... torch.Size([0])``), and the frozen parts of
    a diffusion pipeline (text encoders, VAE). transformers offers no public switch, so the flag it reads (a weak
    reference to the run's DeepSpeed config) is cleared inside the block and restored after it.
    """
    try:
        from transformers.integrations import deepspeed as hf_deepspeed
    except ImportError:
        yield
        return
    saved = getattr(hf_deepspeed, "_hf_deepspeed_config_weak_ref", None)
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved
