"""mDPO: DPO for vision-language models with an image-conditional preference and a reward anchor."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import textwrap
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import DPOTrainer

from .. import _trl_compat
from ..checkpointing import CheckpointSafetyMixin
from ..collators.mdpo import CORRUPTED_PREFIX, DataCollatorForMDPO
from ..data import validate_preference_dataset
from ..losses.mdpo import anchor_loss, conditional_preference_loss, conditional_reward_margin
from ..quantization import keep_4bit_training_exact
from ._init import resolve_args, validate_datasets
from .mdpo_config import MDPOConfig

__all__ = ["MDPOTrainer"]

#: Written into each checkpoint: the rows trained so far, where the image corruptions resume.
MDPO_STATE_NAME = "mdpo_state.json"

# Sequence-aligned model inputs, right-padded with these values when batches of different lengths are stacked.
# Every other tensor input (pixel_values, image_grid_thw, image_sizes, ...) is per image and stacks along dim 0.
_SEQUENCE_PAD_VALUES = {"attention_mask": 0, "labels": -100, "token_type_ids": 0, "mm_token_type_ids": 0}


def _pad_right(tensor: torch.Tensor, length: int, value: int) -> torch.Tensor:
    return torch.nn.functional.pad(tensor, (0, length - tensor.size(1)), value=value)


def _stack_rows(kwargs: dict[str, Any], extra: dict[str, torch.Tensor], pad_token_id: int) -> dict[str, Any]:
    """Model kwargs for the rows of ``kwargs`` followed by the rows of ``extra``."""
    missing = {key for key, value in kwargs.items() if torch.is_tensor(value)} ^ set(extra)
    if missing:
        raise RuntimeError(
            f"MDPOTrainer: the corrupted-image rows and the batch differ in the inputs {sorted(missing)}."
        )
    length = max(kwargs["input_ids"].size(1), extra["input_ids"].size(1))
    stacked = dict(kwargs)
    for key, value in extra.items():
        if key == "input_ids" or key in _SEQUENCE_PAD_VALUES:
            pad = pad_token_id if key == "input_ids" else _SEQUENCE_PAD_VALUES[key]
            stacked[key] = torch.cat([_pad_right(kwargs[key], length, pad), _pad_right(value, length, pad)])
        else:
            stacked[key] = torch.cat([kwargs[key], value.to(kwargs[key].dtype)])
    return stacked


@contextlib.contextmanager
def _fused_forwards_with_extra_rows(
    modules: list[torch.nn.Module], extra: dict[str, torch.Tensor] | None, pad_token_id: int
) -> Iterator[list[tuple[torch.Tensor, torch.Tensor | None]]]:
    """While active, each fused log-prob forward (``fused_lm_head=True``) of ``modules`` also runs the ``extra`` rows.

    The rows are stacked under the caller's batch, so one forward serves both; the caller gets back the outputs of
    its own rows, trimmed to its own length, exactly as if it had run alone. Yields a list that receives, per forward
    and in call order, ``(per-token log-probs of the caller's rows, per-token log-probs of the extra rows or None)``.
    """
    records: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    in_flight: list[tuple[int, int]] = []

    def pre_hook(module, args, kwargs):
        if not kwargs.get("fused_lm_head"):
            return None
        in_flight.append(tuple(kwargs["input_ids"].shape))
        return None if extra is None else (args, _stack_rows(kwargs, extra, pad_token_id))

    def post_hook(module, args, kwargs, output):
        if not kwargs.get("fused_lm_head"):
            return None
        num_rows, length = in_flight.pop()
        total_length = kwargs["input_ids"].size(1)
        extra_log_probs = None
        if extra is not None:
            log_probs = output.log_probs
            extra_log_probs = log_probs[num_rows:, : log_probs.size(1) - (total_length - extra["input_ids"].size(1))]
            for name, value in list(output.items()):
                if torch.is_tensor(value) and value.dim() >= 2 and value.size(0) == kwargs["input_ids"].size(0):
                    output[name] = value[:num_rows, : value.size(1) - (total_length - length)]
        records.append((output.log_probs, extra_log_probs))
        return output

    handles = []
    try:
        for module in modules:
            handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
            handles.append(module.register_forward_hook(post_hook, with_kwargs=True))
        yield records
    finally:
        for handle in handles:
            handle.remove()


class _CorruptionRowsAtEpochStart(TrainerCallback):
    """At each epoch start, before the DataLoader starts its workers: the collator's ``rows`` := the rows trained so
    far. Workers corrupt on copies of the collator, so the trainer's own copy does not count their rows."""

    def __init__(self, trainer: MDPOTrainer):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        if isinstance(self.trainer.data_collator, DataCollatorForMDPO):
            self.trainer.data_collator.rows = self.trainer._rows_trained


class MDPOTrainer(CheckpointSafetyMixin, DPOTrainer):
    r"""
    Trainer for mDPO, [mDPO: Conditional Preference Optimization for Multimodal Large Language
    Models](https://arxiv.org/abs/2406.11839) (Wang et al., EMNLP 2024): DPOTrainer's loss (any `loss_type`) plus
    `conditional_weight` times the conditional preference of the true image over a corrupted copy and
    `anchor_weight` times an anchor on the chosen reward; the objective is in `trl_extras.losses.mdpo`, the
    corruption in `trl_extras.image_corruption`, the batches in `trl_extras.collators.DataCollatorForMDPO`. The
    corrupted-image rows ride along DPOTrainer's own policy and reference forwards (one forward per model, on
    `3 * batch` rows instead of `2 * batch`); with both weights 0 it is DPOTrainer. It takes DPOTrainer's arguments;
    `args` must be an [`MDPOConfig`], `processing_class` a processor and every row needs its image(s).

    Example:

    ```python
    from datasets import Dataset
    from PIL import Image
    from transformers import AutoModelForImageTextToText
    from trl_extras import MDPOConfig, MDPOTrainer, build_tiny_vlm, load_tiny_vlm_processor

    path = build_tiny_vlm("/tmp/tiny-vlm", family="llava")
    dataset = Dataset.from_dict({
        "images": [[Image.effect_noise((32, 32), 64).convert("RGB")] for _ in range(2)],
        "prompt": [[{"role": "user", "content": "Describe the image."}]] * 2,
        "chosen": [[{"role": "assistant", "content": "Grey noise."}]] * 2,
        "rejected": [[{"role": "assistant", "content": "A red car."}]] * 2,
    })
    trainer = MDPOTrainer(
        model=AutoModelForImageTextToText.from_pretrained(path),
        args=MDPOConfig("/tmp/mdpo", max_steps=2, per_device_train_batch_size=2, bf16=False, report_to="none"),
        train_dataset=dataset,
        processing_class=load_tiny_vlm_processor(path),
    )
    trainer.train()
    ```

    Overrides: `__init__`, `_compute_loss`, `_save_checkpoint`, `_load_from_checkpoint`, `get_eval_dataloader`.
    """

    _tag_names = ["trl", "dpo", "mdpo", "trl-extras"]
    _name = "mDPO"
    _paper = {
        "title": "mDPO: Conditional Preference Optimization for Multimodal Large Language Models",
        "id": "2406.11839",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @inproceedings{wang2024mdpo,
                title        = {{mDPO: Conditional Preference Optimization for Multimodal Large Language Models}},
                author       = {Fei Wang and Wenxuan Zhou and James Y. Huang and Nan Xu and Sheng Zhang and Hoifung Poon and Muhao Chen},
                year         = 2024,
                booktitle    = {Proceedings of the 2024 Conference on Empirical Methods in Natural Language Processing, {EMNLP} 2024},
                pages        = {8078--8088},
            }"""),
    }

    def __init__(self, model, ref_model=None, args: MDPOConfig | None = None, **kwargs):
        args = resolve_args(args, MDPOConfig, model, "MDPOTrainer", "mDPO")
        # mDPO contrasts the true image with a corrupted one, so every row needs its image(s)
        kwargs["train_dataset"], kwargs["eval_dataset"] = validate_datasets(
            functools.partial(validate_preference_dataset, images="required"),
            kwargs.get("train_dataset"),
            kwargs.get("eval_dataset"),
        )
        self._rows_trained = 0  # rows this process trained on: where the corruption stream resumes
        super().__init__(model, ref_model, args, **kwargs)
        keep_4bit_training_exact(self.model)  # bitsandbytes' CPU repack off, TRL's bf16 adapter cast undone
        if args.conditional_weight > 0 and not isinstance(self.data_collator, DataCollatorForMDPO):
            self.data_collator = DataCollatorForMDPO(
                base=self.data_collator,
                processor=self.processing_class,
                corruption=args.image_corruption,
                seed=args.corruption_seed,
                max_length=args.max_length,
                num_processes=self.accelerator.num_processes,
                process_index=self.accelerator.process_index,
                batch_size=args.per_device_train_batch_size,
            )
        self.add_callback(_CorruptionRowsAtEpochStart(self))
        if args.conditional_weight > 0 and args.dataloader_num_workers > 0 and args.dataloader_persistent_workers:
            warnings.warn(
                "MDPOTrainer: with dataloader_persistent_workers=True the DataLoader workers keep the image-corruption "
                "row count of the first epoch, so later epochs' corruptions depend on the number of workers and a "
                "resumed run can differ from an uninterrupted one. Set dataloader_persistent_workers=False for "
                "reproducible corruptions.",
                stacklevel=2,
            )

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = os.path.join(
                self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            with open(os.path.join(folder, MDPO_STATE_NAME), "w") as f:
                json.dump({"corruption_rows": self._rows_trained}, f)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        state_file = os.path.join(resume_from_checkpoint, MDPO_STATE_NAME)
        if not os.path.isfile(state_file):
            warnings.warn(
                f"MDPOTrainer: the checkpoint {resume_from_checkpoint} has no {MDPO_STATE_NAME}; the image corruptions "
                "restart from the first draw, so the resumed run differs from an uninterrupted one.",
                stacklevel=2,
            )
            return
        with open(state_file) as f:
            self._rows_trained = json.load(f)["corruption_rows"]
        if isinstance(self.data_collator, DataCollatorForMDPO):  # continue the corruption stream where it stopped
            self.data_collator.rows = self._rows_trained

    def get_eval_dataloader(self, eval_dataset=None):
        # Evaluation corrupts with a copy of the collator, so that it leaves the training stream (and resume) as is;
        # its rows are numbered by the eval loader's batches (workers, several processes)
        collator = self.data_collator
        if isinstance(collator, DataCollatorForMDPO):
            self.data_collator = dataclasses.replace(collator, rows=0, batch_size=self.args.per_device_eval_batch_size)
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = collator

    def _compute_loss(self, model, inputs, return_outputs):
        corrupted = {k[len(CORRUPTED_PREFIX) :]: v for k, v in inputs.items() if k.startswith(CORRUPTED_PREFIX)}
        inputs = {k: v for k, v in inputs.items() if not k.startswith(CORRUPTED_PREFIX)}
        conditional_weight, anchor_weight = self.args.conditional_weight, self.args.anchor_weight
        if conditional_weight == 0 and anchor_weight == 0:
            return super()._compute_loss(model, inputs, return_outputs)
        if conditional_weight > 0 and not corrupted:
            raise ValueError(
                "MDPOTrainer: the batch has no corrupted-image rows (keys 'corrupted_*'). With conditional_weight > 0 "
                "the data collator must be wrapped in DataCollatorForMDPO, which MDPOTrainer does in __init__."
            )

        extra = None
        if conditional_weight > 0:
            extra = {k: v for k, v in corrupted.items() if k != "completion_mask"}
            extra["labels"] = corrupted["input_ids"].masked_fill(corrupted["completion_mask"] == 0, -100)
        modules = [self.accelerator.unwrap_model(model)]
        if self.ref_model is not None:
            modules.append(self.accelerator.unwrap_model(self.ref_model))
        modules = list({id(module): module for module in modules}.values())
        with _fused_forwards_with_extra_rows(modules, extra, _trl_compat.tokenizer(self).pad_token_id) as records:
            result = super()._compute_loss(model, inputs, return_outputs)
        dpo_loss = result[0] if return_outputs else result
        if len(records) != 2:
            raise RuntimeError(
                f"MDPOTrainer expected DPOTrainer._compute_loss to run one policy and one reference log-prob forward, "
                f"saw {len(records)}. The installed TRL computes DPO differently from the version MDPOTrainer supports."
            )
        (policy_log_probs, policy_corrupted_log_probs), (ref_log_probs, ref_corrupted_log_probs) = records

        # Per-token log-probs are zero outside the completion, so sums over positions are sums over response tokens
        num_pairs = inputs["input_ids"].size(0) // 2
        seq_len = inputs["completion_mask"].size(1) - 1
        chosen_logps = policy_log_probs[:num_pairs, -seq_len:].sum(dim=1)  # (B,)
        ref_chosen_logps = ref_log_probs[:num_pairs, -seq_len:].sum(dim=1)  # (B,)

        mode = "train" if self.model.training else "eval"
        if self.model.training:
            self._rows_trained += num_pairs
        gather = self.accelerator.gather_for_metrics
        loss = dpo_loss
        _trl_compat.metrics(self)[mode]["mdpo/dpo_loss"].append(gather(dpo_loss.detach()).mean().item())
        if extra is not None:
            corrupted_len = corrupted["completion_mask"].size(1) - 1
            corrupted_chosen_logps = policy_corrupted_log_probs[:, -corrupted_len:].sum(dim=1)  # (B,)
            ref_corrupted_chosen_logps = ref_corrupted_log_probs[:, -corrupted_len:].sum(dim=1)  # (B,)
            logps = (chosen_logps, ref_chosen_logps, corrupted_chosen_logps, ref_corrupted_chosen_logps)
            conditional = conditional_preference_loss(*logps, self.beta).mean()
            loss = loss + conditional_weight * conditional
            margins = gather(conditional_reward_margin(*logps, self.beta).detach())
            _trl_compat.metrics(self)[mode]["mdpo/conditional_loss"].append(gather(conditional.detach()).mean().item())
            _trl_compat.metrics(self)[mode]["mdpo/conditional_margin"].append(margins.mean().item())
            _trl_compat.metrics(self)[mode]["mdpo/conditional_accuracy"].append((margins > 0).float().mean().item())
        anchor = anchor_loss(chosen_logps, ref_chosen_logps, self.beta, self.args.anchor).mean()
        loss = loss + anchor_weight * anchor
        _trl_compat.metrics(self)[mode]["mdpo/anchor_loss"].append(gather(anchor.detach()).mean().item())
        return (loss, result[1]) if return_outputs else loss
