"""Crash-safe checkpoints and strict resume for every trainer (ours, and TRL's stock ones behind our CLI).

transformers' ``Trainer`` writes ``checkpoint-N`` in place, file by file, and ``resume_from_checkpoint=True`` takes
the highest-numbered folder, finished or not; weights that load with missing or unexpected keys only log a warning
and training goes on from whatever the model held. ``CheckpointSafetyMixin`` changes that:

- **Completion marker.** Once every file of ``checkpoint-N`` is written (all processes, the trainer's own extras such
  as PPO's ``ppo_state.json`` included, i.e. from the ``on_save`` callback event that follows ``_save_checkpoint``),
  the main process fsyncs the files and writes ``checkpoint_complete.json`` atomically (temporary file + rename). A
  folder without it is incomplete. ``resume_from_checkpoint=True`` resolves to the latest *complete* checkpoint and
  warns naming the incomplete ones it skipped; an explicit path to an unmarked checkpoint is an error, or a warning
  if it has ``trainer_state.json`` (a plain ``Trainer`` wrote it, or the crash came after that file).
- **Safe rotation.** ``save_total_limit`` is applied only after the new checkpoint is marked complete, and a deleted
  checkpoint is first renamed out of the ``checkpoint-N`` namespace (``.trash-checkpoint-N``), so a crash during
  deletion never leaves a half-deleted folder that looks like a checkpoint. A stale folder with the step being
  saved (left by a crash, or by the abandoned part of a run resumed from an earlier step) is removed first.
- **Strict loading.** Full-model weights are loaded through transformers' key conversion (``save_pretrained``
  writes the original, e.g. ``language_model.*``, layout of models with a conversion mapping; torch's
  ``load_state_dict``, which ``Trainer`` uses, does not convert back); missing or unexpected keys, in full weights or
  a PEFT adapter, are a ``CheckpointError`` naming the checkpoint and the first keys.

So a ``kill -9`` at any moment leaves a run that ``resume_from_checkpoint=True`` continues from its last complete
checkpoint. Not covered: ``Trainer``'s opt-in just-in-time checkpoint on SIGTERM (``enable_jit_checkpoint``), which
calls ``_save_checkpoint`` without the ``on_save`` event, so its checkpoint stays unmarked.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from transformers import PreTrainedModel, TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME, TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

__all__ = [
    "CHECKPOINT_COMPLETE_NAME",
    "CheckpointError",
    "CheckpointSafetyMixin",
    "checkpoint_safe",
    "is_complete_checkpoint",
    "latest_complete_checkpoint",
    "load_model_weights",
    "mark_complete",
]

#: Written last into a checkpoint folder, atomically: the folder is complete.
CHECKPOINT_COMPLETE_NAME = "checkpoint_complete.json"
_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
_TRASH_PREFIX = ".trash-"
_SHOWN_KEYS = 5


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from exactly: incomplete, or its weights do not match the model."""


# ---------------------------------------------------------------------------------------------------------------------
# finding checkpoints


def _checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """``(step, path)`` of every ``checkpoint-N`` folder in ``output_dir``, by step."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = _CHECKPOINT_RE.match(name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            found.append((int(match.group(1)), os.path.join(output_dir, name)))
    return sorted(found)


def is_complete_checkpoint(path: str) -> bool:
    """Whether ``path`` holds a checkpoint whose writing finished (it has ``checkpoint_complete.json``)."""
    return os.path.isfile(os.path.join(path, CHECKPOINT_COMPLETE_NAME))


def latest_complete_checkpoint(output_dir: str, warn: bool = True) -> str | None:
    """The highest-numbered complete ``checkpoint-N`` in ``output_dir`` (``None`` if there is none).

    Incomplete checkpoints above it (a crash while writing them) are skipped with a warning that names them.
    """
    checkpoints = _checkpoints(output_dir)
    complete = [path for _, path in checkpoints if is_complete_checkpoint(path)]
    latest = complete[-1] if complete else None
    latest_step = -1 if latest is None else _step(latest)
    skipped = [path for step, path in checkpoints if step > latest_step and not is_complete_checkpoint(path)]
    if skipped and warn and latest is not None:
        warnings.warn(
            f"Skipping incomplete checkpoint(s) {', '.join(skipped)} (no {CHECKPOINT_COMPLETE_NAME}: the run stopped "
            f"while writing them); resuming from {latest or 'nothing'}.",
            stacklevel=2,
        )
    return latest


def _step(path: str) -> int:
    return int(_CHECKPOINT_RE.match(os.path.basename(os.path.normpath(path))).group(1))


def resolve_resume_from_checkpoint(resume_from_checkpoint: str | bool | None, output_dir: str) -> str | None:
    """``Trainer.train``'s ``resume_from_checkpoint``: ``True`` (or ``"true"``, as a config file may give it) -> the
    latest complete checkpoint of ``output_dir``; a path must be a complete checkpoint."""
    if isinstance(resume_from_checkpoint, str) and resume_from_checkpoint.strip().lower() in ("true", "false"):
        resume_from_checkpoint = resume_from_checkpoint.strip().lower() == "true"
    if resume_from_checkpoint is False or resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint is True:
        path = latest_complete_checkpoint(output_dir)
        if path is None:
            found = [path for _, path in _checkpoints(output_dir)]
            raise CheckpointError(
                f"resume_from_checkpoint=True: no complete checkpoint in {output_dir}"
                + (f" (incomplete, without {CHECKPOINT_COMPLETE_NAME}: {', '.join(found)})" if found else "")
                + ". Start without resume_from_checkpoint, or pass the path of a checkpoint explicitly."
            )
        return path
    path = os.fspath(resume_from_checkpoint)
    if not os.path.isdir(path):
        raise CheckpointError(f"resume_from_checkpoint: {path} is not a directory.")
    if is_complete_checkpoint(path):
        return path
    latest = latest_complete_checkpoint(os.path.dirname(os.path.normpath(path)), warn=False)
    hint = f"The latest complete one is {latest}." if latest else "Its folder has no complete checkpoint."
    if not os.path.isfile(os.path.join(path, TRAINER_STATE_NAME)):
        raise CheckpointError(
            f"resume_from_checkpoint: {path} is not a complete checkpoint (no {CHECKPOINT_COMPLETE_NAME} and no "
            f"{TRAINER_STATE_NAME}: the run stopped while writing it). {hint}"
        )
    warnings.warn(  # e.g. written by a plain Trainer: its last file is there, so take the user's word for it
        f"resume_from_checkpoint: {path} has no {CHECKPOINT_COMPLETE_NAME} (written by a trainer without "
        f"trl-extras' checkpoint safety, or stopped after {TRAINER_STATE_NAME}); resuming from it as asked. {hint}",
        stacklevel=3,
    )
    return path


# ---------------------------------------------------------------------------------------------------------------------
# writing: marker and rotation


def _fsync(path: str) -> None:
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if os.path.isdir(path) else os.O_RDONLY
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def mark_complete(checkpoint_dir: str, global_step: int) -> None:
    """Flush every file of ``checkpoint_dir`` to disk, then write ``checkpoint_complete.json`` atomically."""
    files = {}
    for root, _, names in os.walk(checkpoint_dir):
        for name in names:
            path = os.path.join(root, name)
            _fsync(path)
            files[os.path.relpath(path, checkpoint_dir)] = os.path.getsize(path)
    for root, _, _ in os.walk(checkpoint_dir):
        _fsync(root)
    marker = os.path.join(checkpoint_dir, CHECKPOINT_COMPLETE_NAME)
    with open(marker + ".tmp", "w") as f:
        json.dump({"global_step": global_step, "files": dict(sorted(files.items()))}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(marker + ".tmp", marker)
    _fsync(checkpoint_dir)


def _discard(path: str) -> None:
    """Delete a checkpoint folder: first rename it out of the ``checkpoint-N`` namespace (atomic), then remove it."""
    trash = os.path.join(os.path.dirname(path), _TRASH_PREFIX + os.path.basename(path))
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    _fsync(os.path.dirname(path))
    shutil.rmtree(trash, ignore_errors=True)


def _empty_trash(run_dir: str) -> None:
    if os.path.isdir(run_dir):
        for name in os.listdir(run_dir):
            if name.startswith(_TRASH_PREFIX + PREFIX_CHECKPOINT_DIR):
                shutil.rmtree(os.path.join(run_dir, name), ignore_errors=True)


def rotate_checkpoints(run_dir: str, save_total_limit: int | None, keep: list[str | None]) -> list[str]:
    """Keep at most ``save_total_limit`` checkpoints in ``run_dir``: the ``keep`` ones (the one just written, the
    best one), then the highest-numbered complete ones. Incomplete checkpoints are deleted first. Returns the
    deleted paths."""
    _empty_trash(run_dir)
    if not save_total_limit or save_total_limit <= 0:
        return []
    protected = {os.path.normpath(path) for path in keep if path is not None}
    checkpoints = [os.path.normpath(path) for _, path in _checkpoints(run_dir)]
    complete = [path for path in checkpoints if is_complete_checkpoint(path) and path not in protected]
    room = max(save_total_limit - len(protected), 0)
    kept = protected | set(complete[len(complete) - room :] if room else [])
    deleted = [path for path in checkpoints if path not in kept]
    for path in deleted:
        _discard(path)
    return deleted


@contextlib.contextmanager
def _rotation_deferred(args) -> Iterator[None]:
    """``Trainer._save_checkpoint`` rotates right after writing ``trainer_state.json``, before a subclass's extra
    files and before the checkpoint is marked: hold ``save_total_limit`` back while it runs."""
    limit = args.save_total_limit
    args.save_total_limit = None
    try:
        yield
    finally:
        args.save_total_limit = limit


class _MarkCheckpointComplete(TrainerCallback):
    """``on_save`` comes once ``_save_checkpoint`` has returned, overrides and all: mark the checkpoint, rotate."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):
        self.trainer._finish_checkpoint()


# ---------------------------------------------------------------------------------------------------------------------
# loading


def _checkpoint_weight_files(checkpoint_dir: str) -> list[str] | None:
    single = os.path.join(checkpoint_dir, SAFE_WEIGHTS_NAME)
    if os.path.isfile(single):
        return [single]
    index = os.path.join(checkpoint_dir, SAFE_WEIGHTS_INDEX_NAME)
    if os.path.isfile(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(checkpoint_dir, shard) for shard in shards]
    return None


def _to_model_keys(model: PreTrainedModel, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename checkpoint keys as ``from_pretrained`` does (the model's conversion mapping, base-model prefix).

    Only renamings are applied; a key that a weight *converter* (fusing or splitting tensors) would transform is left
    as is, and the strict check then names it.
    """
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    conversions = get_model_conversion_mapping(model)
    renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
    converters = [c for c in conversions if isinstance(c, WeightConverter)]
    expected = model.state_dict()
    renamed = {}
    for key, tensor in state_dict.items():
        new_key, converter = rename_source_key(key, renamings, converters, model.base_model_prefix, expected)
        renamed[key if converter is not None else new_key] = tensor
    return renamed


def _tied_aliases(model: torch.nn.Module) -> dict[str, set[str]]:
    """For every state-dict key, the other keys that share its storage (tied weights)."""
    by_storage: dict[Any, set[str]] = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        if torch.is_tensor(tensor) and tensor.device.type != "meta":
            by_storage.setdefault((tensor.untyped_storage().data_ptr(), tensor.shape), set()).add(key)
    return {key: group - {key} for group in by_storage.values() for key in group}


def check_load_result(model: torch.nn.Module, missing: list[str], unexpected: list[str], checkpoint: str) -> None:
    """Raise ``CheckpointError`` on missing or unexpected keys; a missing key tied to a loaded one is fine."""
    aliases = _tied_aliases(model)
    missing_set = set(missing)
    missing = [key for key in missing if not (aliases.get(key, set()) - missing_set)]
    if not missing and not unexpected:
        return
    parts = []
    for what, keys in (("missing from the checkpoint", missing), ("unexpected (not in the model)", unexpected)):
        if keys:
            more = f", ... ({len(keys)} in all)" if len(keys) > _SHOWN_KEYS else ""
            parts.append(f"{what}: {', '.join(keys[:_SHOWN_KEYS])}{more}")
    raise CheckpointError(
        f"Checkpoint {checkpoint} does not match the model ({type(model).__name__}); keys {'; keys '.join(parts)}. "
        "Resuming would continue from partly initial weights. Resume with the model (and PEFT/quantization "
        "settings) the checkpoint was written with."
    )


def load_model_weights(model: PreTrainedModel, checkpoint_dir: str) -> None:
    """Load a checkpoint's full-model safetensors weights into ``model`` in place, strictly, with the key renames
    ``from_pretrained`` applies."""
    from safetensors.torch import load_file

    files = _checkpoint_weight_files(checkpoint_dir)
    if files is None:
        raise CheckpointError(f"Checkpoint {checkpoint_dir} has no {SAFE_WEIGHTS_NAME} or {SAFE_WEIGHTS_INDEX_NAME}.")
    state_dict = {}
    for path in files:
        state_dict.update(load_file(path, device="cpu"))
    result = model.load_state_dict(_to_model_keys(model, state_dict), strict=False)
    check_load_result(model, result.missing_keys, result.unexpected_keys, checkpoint_dir)
    model.tie_weights()


def _check_adapter_keys(model, checkpoint_dir: str) -> None:
    """After PEFT's ``load_adapter`` (whose result Trainer drops): the adapter file holds exactly the adapter's keys."""
    from peft import get_peft_model_state_dict
    from safetensors import safe_open

    path = os.path.join(checkpoint_dir, "adapter_model.safetensors")
    if not os.path.isfile(path):
        return
    with safe_open(path, framework="pt") as f:
        saved = set(f.keys())
    expected = set(get_peft_model_state_dict(model, adapter_name=model.active_adapters[0]))
    check_load_result(model, sorted(expected - saved), sorted(saved - expected), checkpoint_dir)


# ---------------------------------------------------------------------------------------------------------------------
# the mixin


class CheckpointSafetyMixin:
    """Put first among a ``Trainer`` subclass's bases: completion-marked checkpoints, safe rotation, strict resume.

    Hooks (each wraps ``super()``): ``train`` (resolves ``resume_from_checkpoint``, adds the completion callback),
    ``_save_checkpoint`` (removes a stale folder of the same step, holds rotation back), ``_load_from_checkpoint``
    (full weights through ``load_model_weights``; PEFT adapters checked after loading), ``_load_best_model`` (the same
    for ``load_best_model_at_end``) and
    ``_issue_warnings_after_load`` (an error instead of a warning). See the module docstring.
    """

    _pending_checkpoint: str | None = None

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, ignore_keys_for_eval=None, **kwargs):
        resume_from_checkpoint = resolve_resume_from_checkpoint(resume_from_checkpoint, self.args.output_dir)
        callbacks = self.callback_handler.callbacks
        if not any(isinstance(cb, _MarkCheckpointComplete) for cb in callbacks):
            callbacks.insert(0, _MarkCheckpointComplete(self))  # first: other on_save callbacks see a marked folder
        return super().train(
            resume_from_checkpoint=resume_from_checkpoint,
            trial=trial,
            ignore_keys_for_eval=ignore_keys_for_eval,
            **kwargs,
        )

    def _save_checkpoint(self, model, trial):
        run_dir = self._get_output_dir(trial=trial)
        folder = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.args.should_save:
            _empty_trash(run_dir)
            if os.path.isdir(folder):
                _discard(folder)  # crash leftover, or the abandoned rest of a run resumed from an earlier step
        if self.accelerator.num_processes > 1:
            self.accelerator.wait_for_everyone()  # nobody writes into the folder before it is cleared
        self._pending_checkpoint = folder
        with _rotation_deferred(self.args):
            super()._save_checkpoint(model, trial)

    def _finish_checkpoint(self) -> None:
        folder, self._pending_checkpoint = self._pending_checkpoint, None
        if folder is None:
            return
        if self.accelerator.num_processes > 1:
            self.accelerator.wait_for_everyone()  # every process wrote its files (RNG states)
        if self.args.should_save and os.path.isdir(folder):
            args_file = os.path.join(folder, TRAINING_ARGS_NAME)
            if os.path.isfile(args_file):  # written while rotation was held back: store the real save_total_limit
                torch.save(self.args, args_file)
            mark_complete(folder, self.state.global_step)
            rotate_checkpoints(
                os.path.dirname(folder), self.args.save_total_limit, [folder, self.state.best_model_checkpoint]
            )

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        target = self.model if model is None else model
        plain = not (self.is_deepspeed_enabled or self.is_fsdp_enabled)
        if plain and isinstance(target, PreTrainedModel) and _checkpoint_weight_files(resume_from_checkpoint):
            load_model_weights(target, resume_from_checkpoint)
            return
        self._checkpoint_being_loaded = resume_from_checkpoint
        try:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        finally:
            self._checkpoint_being_loaded = None
        if plain and hasattr(target, "peft_config") and hasattr(target, "active_adapters"):
            _check_adapter_keys(target, resume_from_checkpoint)

    def _load_best_model(self):
        best = self.state.best_model_checkpoint
        plain = not (self.is_deepspeed_enabled or self.is_fsdp_enabled)
        if plain and isinstance(self.model, PreTrainedModel) and _checkpoint_weight_files(best):
            load_model_weights(self.model, best)
            return
        super()._load_best_model()

    def _issue_warnings_after_load(self, load_result):
        checkpoint = getattr(self, "_checkpoint_being_loaded", None) or self.state.best_model_checkpoint
        check_load_result(self.model, load_result.missing_keys, load_result.unexpected_keys, str(checkpoint))


_SAFE_CLASSES: dict[type, type] = {}


def checkpoint_safe(trainer_class: type) -> type:
    """``trainer_class`` with ``CheckpointSafetyMixin`` (itself if it already has it), same name and attributes."""
    if issubclass(trainer_class, CheckpointSafetyMixin):
        return trainer_class
    if trainer_class not in _SAFE_CLASSES:
        _SAFE_CLASSES[trainer_class] = type(
            trainer_class.__name__,
            (CheckpointSafetyMixin, trainer_class),
            {"__module__": trainer_class.__module__, "__qualname__": trainer_class.__qualname__},
        )
    return _SAFE_CLASSES[trainer_class]


def make_checkpoint_safe(trainer) -> None:
    """Give an already built trainer ``CheckpointSafetyMixin`` (the CLI does this for TRL's stock trainers)."""
    if not isinstance(trainer, CheckpointSafetyMixin):
        trainer.__class__ = checkpoint_safe(type(trainer))
