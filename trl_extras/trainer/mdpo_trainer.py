"""mDPO: DPO for vision-language models with an image-conditional preference and a reward anchor."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import textwrap
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import ProcessorMixin
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import DPOTrainer
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from .. import _trl_compat
from ..checkpointing import CheckpointSafetyMixin
from ..data import validate_preference_dataset
from ..image_corruption import ImageCorruption
from ..losses.mdpo import anchor_loss, conditional_preference_loss, conditional_reward_margin
from ..quantization import keep_4bit_training_exact
from .mdpo_config import MDPOConfig

__all__ = ["DataCollatorForMDPO", "MDPOTrainer"]

#: Written into each checkpoint: the rows trained so far, where the image corruptions resume.
MDPO_STATE_NAME = "mdpo_state.json"

#: Prefix of the batch keys that hold the conditional term's rows (chosen response, corrupted image).
CORRUPTED_PREFIX = "corrupted_"

# Sequence-aligned model inputs, right-padded with these values when batches of different lengths are stacked.
# Every other tensor input (pixel_values, image_grid_thw, image_sizes, ...) is per image and stacks along dim 0.
_SEQUENCE_PAD_VALUES = {"attention_mask": 0, "labels": -100, "token_type_ids": 0, "mm_token_type_ids": 0}


def _as_pil(image: Any, row: int) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray):
        return Image.fromarray(image)
    raise TypeError(
        f"MDPOTrainer: row {row} of the batch has an image of type {type(image).__name__}; the image corruption "
        "needs decoded images (PIL.Image.Image or a uint8 numpy array). Cast the column with datasets.Image()."
    )


def _copy_example(example: dict[str, Any]) -> dict[str, Any]:
    # TRL's collators rewrite the examples they get (image -> images, string messages -> content parts); give each
    # collator its own copy of the text fields so the two calls see the same raw row.
    return {
        key: copy.deepcopy(value) if key in ("prompt", "chosen", "rejected") else value
        for key, value in example.items()
    }


@dataclass
class DataCollatorForMDPO:
    """Adds the rows of mDPO's conditional term to a vision preference batch.

    ``base`` is the vision preference collator DPOTrainer would use (TRL's ``DataCollatorForVisionPreference`` or
    ``trl_extras.VisionPreferenceCollator``); its batch is returned unchanged, with ``2 * batch`` rows
    ``[prompt + chosen, prompt + rejected]``. Next to it, under keys prefixed ``corrupted_``, come ``batch`` rows
    ``prompt + chosen`` whose images are corrupted copies (``corruption``) of the true ones, collated by TRL's
    prompt-completion vision collator so that they are tokenised exactly like the chosen rows (checked per row).

    Each row's corruption draws from a generator seeded with ``(seed, worker id, global_row(rows))``, ``rows`` being
    the number of rows corrupted before it in this process and ``global_row`` its place among the rows of all
    processes: a run is reproducible for a given seed, 2 processes draw what 1 process with their whole batch draws,
    every step gets fresh crops,
    and a batch split into gradient-accumulation micro-batches gets the crops the whole batch would. ``rows`` is the
    collator's whole state: ``MDPOTrainer`` saves the rows it trained on in each checkpoint and restores them on
    resume, and evaluates with a copy of its own, so a resumed run draws what the uninterrupted run drew (with
    ``dataloader_num_workers=0``; each worker process counts for itself).
    """

    base: Callable[[list[dict[str, Any]]], dict[str, Any]]
    processor: ProcessorMixin
    corruption: ImageCorruption = field(default_factory=ImageCorruption)
    seed: int = 0
    max_length: int | None = None
    rows: int = 0
    # Set by MDPOTrainer from its accelerator: the corruption of a row depends on its place among all processes' rows
    num_processes: int = 1
    process_index: int = 0
    batch_size: int | None = None
    _chosen_collator: DataCollatorForVisionLanguageModeling | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._chosen_collator = DataCollatorForVisionLanguageModeling(
            processor=self.processor, max_length=self.max_length, completion_only_loss=True
        )

    def corrupt(self, example: dict[str, Any], row: int) -> list[Image.Image]:
        worker = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, 0 if worker is None else worker.id, self.global_row(self.rows)])
        self.rows += 1
        images = example["images"] if "images" in example else [example["image"]]
        return [self.corruption(_as_pil(image, row), rng) for image in images]

    def global_row(self, rows: int) -> int:
        """Where this process's `rows`-th row stands in the rows of all processes, as accelerate shards batches
        (process ``k`` takes batch ``step * num_processes + k`` of ``batch_size`` rows), so that several processes
        draw the corruptions one process with their whole batch draws. One process: ``rows`` itself."""
        if self.num_processes == 1 or not self.batch_size:
            return rows
        step, offset = divmod(rows, self.batch_size)
        return (step * self.num_processes + self.process_index) * self.batch_size + offset

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.base([_copy_example(example) for example in examples])
        chosen_rows = []
        for row, example in enumerate(examples):
            chosen_row = {"images": self.corrupt(example, row)}
            chosen_row.update(
                {k: copy.deepcopy(v) for k, v in example.items() if k in ("prompt", "tools", "chat_template_kwargs")}
            )
            chosen_row["completion"] = copy.deepcopy(example["chosen"])
            chosen_rows.append(chosen_row)
        corrupted = self._chosen_collator(chosen_rows)
        corrupted["completion_mask"] = (corrupted.pop("labels") != -100).long()
        self._check(batch, corrupted)
        batch.update({CORRUPTED_PREFIX + key: value for key, value in corrupted.items()})
        return batch

    def _check(self, batch: dict[str, Any], corrupted: dict[str, Any]) -> None:
        num_rows = corrupted["input_ids"].size(0)
        completion_tokens = batch["completion_mask"].sum(dim=1)
        if (completion_tokens == 0).any():
            row = int((completion_tokens == 0).nonzero()[0]) % num_rows
            raise ValueError(
                f"MDPOTrainer: in row {row} of the batch the prompt, with its image tokens, fills "
                f"max_length={self.max_length}, so a response has no token left to train on. Increase max_length "
                "(or set it to None) or shorten the prompt."
            )
        for row in range(num_rows):
            chosen = batch["input_ids"][row][batch["completion_mask"][row].bool()]
            chosen_with_corrupted_image = corrupted["input_ids"][row][corrupted["completion_mask"][row].bool()]
            if not torch.equal(chosen, chosen_with_corrupted_image):
                raise ValueError(
                    f"MDPOTrainer: row {row} of the batch: the chosen response tokenises differently next to the true "
                    f"image ({chosen.tolist()}) and next to the corrupted image ({chosen_with_corrupted_image.tolist()}). "
                    "The base collator must tokenise prompt and chosen response like TRL's DataCollatorForVisionPreference."
                )


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


class MDPOTrainer(CheckpointSafetyMixin, DPOTrainer):
    r"""
    Trainer for mDPO, [mDPO: Conditional Preference Optimization for Multimodal Large Language
    Models](https://arxiv.org/abs/2406.11839) (Wang et al., EMNLP 2024).

    For an image ``m``, a question ``q``, a chosen and a rejected response ``y_w``, ``y_l``, a corrupted image ``m'``
    and the implicit reward ``r(m, q, y) = beta * log(pi_theta(y|m,q) / pi_ref(y|m,q))``, mDPO minimises

        L = L_DPO + conditional_weight * L_CoPO + anchor_weight * L_AncPO
        L_CoPO  = -log sigmoid(r(m, q, y_w) - r(m', q, y_w))
        L_AncPO = -log sigmoid(r(m, q, y_w) - anchor)

    (paper: weights 1, ``anchor = 0``). ``L_DPO`` is DPOTrainer's loss for the configured ``loss_type``; the two extra
    terms are in ``trl_extras.losses.mdpo``, and ``m'`` is a random crop keeping at most 20% of the image
    (``trl_extras.image_corruption``, configured by ``MDPOConfig.corruption_*``). With both weights 0 the trainer is
    DPOTrainer, forward passes included. The extra terms use the summed log-probs of the responses (``ld_alpha`` only
    affects the DPO term).

    Example:

    ```python
    from datasets import Dataset
    from PIL import Image
    from transformers import AutoModelForImageTextToText
    from trl_extras import MDPOConfig, MDPOTrainer, build_tiny_vlm
    from trl_extras.testing._vlm import load_tiny_vlm_processor

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

    Hooks (DPOTrainer computes its forwards and loss inline in ``_compute_loss``, so that is the one method wrapped):

    - ``__init__``: requires an ``MDPOConfig``, checks the datasets with
      ``trl_extras.data.validate_preference_dataset(dataset, images="required")`` (a missing, unreadable or surplus
      image is a ``PreferenceDataError`` naming row and column), calls DPOTrainer's, then wraps the data collator it
      chose (or was given) in ``DataCollatorForMDPO``, which adds the chosen rows with corrupted images.
    - ``_load_from_checkpoint``: after the weights (``trl_extras.checkpointing``, which also undoes the key renames
      ``save_pretrained`` applies to vision-language models), restores the collator's corruption stream from
      ``mdpo_state.json``, which ``_save_checkpoint`` writes (the rows trained so far); ``get_eval_dataloader``
      gives evaluation its own copy of the collator.
    - ``_compute_loss``: calls DPOTrainer's for the DPO loss and its metrics. Meanwhile forward hooks stack the
      corrupted-image rows under DPOTrainer's own policy and reference forwards (one forward each, as in DPO, on
      ``3 * batch`` rows instead of ``2 * batch``) and hand DPOTrainer back exactly its own outputs; from the recorded
      log-probs it adds the conditional and anchor terms and logs ``mdpo/dpo_loss``, ``mdpo/conditional_loss``,
      ``mdpo/anchor_loss``, ``mdpo/conditional_margin`` and ``mdpo/conditional_accuracy``.

    Args:
        Same as [`trl.DPOTrainer`]; ``args`` must be an [`MDPOConfig`], ``processing_class`` a processor and the
        datasets must have an ``images`` (list of images) or ``image`` column.
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

    def __init__(
        self,
        model,
        ref_model=None,
        args: MDPOConfig | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        compute_metrics=None,
        callbacks=None,
        optimizers=(None, None),
        quantization_config=None,
        peft_config=None,
    ):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = MDPOConfig(f"{str(name).rstrip('/').split('/')[-1]}-mDPO")
        elif not isinstance(args, MDPOConfig):
            raise TypeError(f"MDPOTrainer needs an MDPOConfig as `args`, got {type(args).__name__}.")
        train_dataset = self._validate_image_data(train_dataset)
        if isinstance(eval_dataset, dict):
            eval_dataset = {name: self._validate_image_data(data) for name, data in eval_dataset.items()}
        else:
            eval_dataset = self._validate_image_data(eval_dataset)
        self._rows_trained = 0  # rows this process trained on: where the corruption stream resumes
        super().__init__(
            model=model,
            ref_model=ref_model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            quantization_config=quantization_config,
            peft_config=peft_config,
        )
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
        # Evaluation corrupts with a copy of the collator, so that it leaves the training stream (and resume) as is
        collator = self.data_collator
        if isinstance(collator, DataCollatorForMDPO):
            self.data_collator = dataclasses.replace(collator, rows=0)
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = collator

    @staticmethod
    def _validate_image_data(dataset):
        """The shared data layer's checks, with at least one image per row; returns the dataset it gives back."""
        if dataset is None:
            return None
        # mDPO contrasts the true image with a corrupted one, so every row needs its image(s)
        return validate_preference_dataset(dataset, images="required")

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
