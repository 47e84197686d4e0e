"""Unlikelihood training on preference pairs, as a reference-free subclass of TRL's ``DPOTrainer``."""

from __future__ import annotations

import textwrap
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from accelerate.utils import is_peft_model
from datasets import Dataset
from trl import DPOTrainer
from trl.trainer.utils import get_config_model_id

from .. import _trl_compat
from ..checkpointing import CheckpointSafetyMixin
from ..losses.unlikelihood import sequence_unlikelihood_loss, token_unlikelihood_loss
from ..quantization import keep_4bit_training_exact
from ._length_check import PreferenceLengthCheck
from .unlikelihood_config import UnlikelihoodConfig

if TYPE_CHECKING:
    from datasets import IterableDataset
    from peft import PeftConfig, PeftModel
    from transformers import (
        BitsAndBytesConfig,
        DataCollator,
        EvalPrediction,
        PreTrainedModel,
        PreTrainedTokenizerBase,
        ProcessorMixin,
        TrainerCallback,
    )

# batch keys the DPO collators add that are not model inputs
_NON_MODEL_KEYS = frozenset({"completion_mask", "ref_chosen_logps", "ref_rejected_logps"})


class UnlikelihoodTrainer(CheckpointSafetyMixin, PreferenceLengthCheck, DPOTrainer):
    r"""
    Unlikelihood training on preference data: raise the likelihood of the chosen completion, lower that of the
    rejected one, with no reference model. A drop-in replacement for [`~trl.DPOTrainer`]: same datasets (standard or
    conversational, explicit or implicit prompt, vision-language with an `images` column), same `peft_config` /
    `quantization_config` / PEFT-model inputs, same collators and metric names.

    Objectives ([`UnlikelihoodConfig.unlikelihood_type`]), with $\alpha$ = `rejected_weight`:

    - `"token"` (default), the token-level unlikelihood loss of Welleck et al. 2019
      ([arXiv:1908.04319](https://arxiv.org/abs/1908.04319)) with the rejected completion's tokens as negatives:
      $\frac{1}{|y_w|}\sum_t -\log \pi_\theta(y_{w,t} \mid x, y_{w,<t})
      + \alpha \frac{1}{|y_l|}\sum_t -\log\big(1 - \pi_\theta(y_{l,t} \mid x, y_{l,<t})\big)$. Bounded below by 0.
    - `"sequence"`, the "Unlikelihood" baseline of the DPO paper (Rafailov et al. 2023,
      [arXiv:2305.18290](https://arxiv.org/abs/2305.18290), section 6 and appendix C.3):
      $-\log \pi_\theta(y_w \mid x) + \alpha \log \pi_\theta(y_l \mid x)$ (per-token means with
      `length_normalize=True`). Unbounded below; it degenerates once $\log \pi_\theta(y_l \mid x) \to -\infty$.

    Batch reduction: one loss per pair (token terms are per-completion means), averaged over the pairs of the
    micro-batch, exactly like DPO's `per_sequence_loss.mean()`; `Trainer` then divides by the gradient accumulation
    steps (`loss_is_scaled_for_ga = False`, inherited), so accumulation over equal micro-batches matches one big batch.

    Example:

    ```python
    >>> from datasets import Dataset
    >>> from trl_extras import UnlikelihoodConfig, UnlikelihoodTrainer, build_tiny_causal_lm

    >>> dataset = Dataset.from_list([{"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}] * 8)
    >>> trainer = UnlikelihoodTrainer(
    ...     model=build_tiny_causal_lm("/tmp/tiny-lm"),
    ...     args=UnlikelihoodConfig("/tmp/ul", max_steps=2, bf16=False, report_to="none"),
    ...     train_dataset=dataset,
    ... )
    >>> trainer.train()
    ```

    Hooks overridden (everything else is `DPOTrainer`'s):

    - `__init__`: rejects `ref_model`, checks the datasets with `trl_extras.data.validate_preference_dataset`, and
      runs `DPOTrainer.__init__` with its reference-model load turned into a no-op (see `_trl_compat.dpo_without_reference_model_load`;
      `DPOTrainer` has no switch for "no reference"), so no second model is ever loaded. With a `PeftModel` that
      already carries an adapter, `DPOTrainer` copies it into a frozen `"ref"` adapter; that copy is deleted at once.
      `self.ref_model` is `None` and no reference forward pass (second model or disabled adapter) ever runs.
    - `_compute_loss`: DPO computes the policy log-probs, the reference log-probs and its loss inline in one
      330-line method with no narrower hook, so it is replaced. The override keeps DPO's pieces: the same policy
      forward through TRL's fused LM head (`model(..., labels=..., fused_lm_head=True)`, installed by
      `DPOTrainer.__init__`), the same `[chosen; rejected]` batch layout, the MoE auxiliary loss, and the same
      metrics and names (`logps/*`, `logits/*`, `entropy`, `mean_token_accuracy`, `num_tokens`); the loss itself
      comes from `trl_extras.losses.unlikelihood`. DPO's `rewards/*` are not logged: they are reference log-ratios.
      New metrics: `unlikelihood/chosen_nll`, `unlikelihood/rejected_loss` (the unweighted terms, so
      `loss = chosen_nll + rejected_weight * rejected_loss`) and `unlikelihood/rejected_token_prob` (mean p of the
      rejected completions' tokens).
    """

    _tag_names = ["trl", "trl-extras", "unlikelihood"]
    _name = "Unlikelihood"
    _paper = {
        "title": "Neural Text Generation with Unlikelihood Training",
        "id": "1908.04319",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @inproceedings{welleck2020neural,
                title        = {{Neural Text Generation with Unlikelihood Training}},
                author       = {Sean Welleck and Ilia Kulikov and Stephen Roller and Emily Dinan and Kyunghyun Cho and Jason Weston},
                year         = 2020,
                booktitle    = {8th International Conference on Learning Representations, ICLR 2020},
                url          = {https://openreview.net/forum?id=SJeYe0NtvH},
            }
            @inproceedings{rafailov2023direct,
                title        = {{Direct Preference Optimization: Your Language Model is Secretly a Reward Model}},
                author       = {Rafael Rafailov and Archit Sharma and Eric Mitchell and Christopher D. Manning and Stefano Ermon and Chelsea Finn},
                year         = 2023,
                booktitle    = {Advances in Neural Information Processing Systems 36, NeurIPS 2023},
                url          = {https://arxiv.org/abs/2305.18290},
            }"""),
    }

    def __init__(
        self,
        model: str | PreTrainedModel | PeftModel,
        ref_model: None = None,
        args: UnlikelihoodConfig | None = None,
        data_collator: DataCollator | None = None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset: Dataset | IterableDataset | dict[str, Dataset | IterableDataset] | None = None,
        processing_class: PreTrainedTokenizerBase | ProcessorMixin | None = None,
        compute_metrics: Callable[[EvalPrediction], dict] | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple[torch.optim.Optimizer | None, torch.optim.lr_scheduler.LambdaLR | None] = (None, None),
        quantization_config: BitsAndBytesConfig | None = None,
        peft_config: PeftConfig | None = None,
    ):
        if ref_model is not None:
            raise ValueError(
                "UnlikelihoodTrainer uses no reference model, but `ref_model` was given. Drop the `ref_model` "
                "argument (and do not load one: it only costs memory)."
            )
        if args is None:
            model_name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = UnlikelihoodConfig(f"{model_name.split('/')[-1]}-Unlikelihood")
        elif not isinstance(args, UnlikelihoodConfig):
            raise TypeError(
                f"UnlikelihoodTrainer needs `args` to be an UnlikelihoodConfig, got {type(args).__name__}. "
                "UnlikelihoodConfig accepts every DPOConfig field: replace `DPOConfig(...)` by `UnlikelihoodConfig(...)`."
            )
        train_dataset, eval_dataset = _validate(train_dataset), _validate(eval_dataset)

        had_ref_adapter = not isinstance(model, str) and is_peft_model(model) and "ref" in model.peft_config
        with _trl_compat.dpo_without_reference_model_load(self):
            super().__init__(
                model,
                ref_model=None,
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
        if is_peft_model(self.model) and "ref" in self.model.peft_config and not had_ref_adapter:
            self.model.delete_adapter("ref")  # DPOTrainer's frozen copy of a pretrained adapter, unused here
        if self.ref_model is not None:  # pragma: no cover - guards against a TRL change
            raise RuntimeError("UnlikelihoodTrainer must not hold a reference model; TRL's DPOTrainer changed.")

    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        model_kwargs = {k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS}
        model_kwargs["use_cache"] = False
        if self.aux_loss_enabled:
            model_kwargs["output_router_logits"] = True
        completion_mask = inputs["completion_mask"]
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)

        # position t scores token t + 1; prompt-learning PEFT prepends virtual positions, keep the real ones
        mask = completion_mask[:, 1:]  # (2B, T-1)
        seq_len = mask.size(1)
        per_token_logps = outputs.log_probs[:, -seq_len:]  # (2B, T-1), 0 where masked
        chosen_logps, rejected_logps = per_token_logps.chunk(2, dim=0)  # batch is [chosen; rejected]
        chosen_mask, rejected_mask = mask.chunk(2, dim=0)

        args = self.args
        if args.unlikelihood_type == "token":
            per_pair_loss, chosen_term, rejected_term = token_unlikelihood_loss(
                chosen_logps, chosen_mask, rejected_logps, rejected_mask, args.rejected_weight, args.min_one_minus_prob
            )
        else:
            per_pair_loss, chosen_term, rejected_term = sequence_unlikelihood_loss(
                chosen_logps, chosen_mask, rejected_logps, rejected_mask, args.rejected_weight, args.length_normalize
            )
        loss = per_pair_loss.mean()

        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss
            _trl_compat.metrics(self)[mode]["aux_loss"].append(
                self.accelerator.gather_for_metrics(outputs.aux_loss).mean().item()
            )

        self._log_metrics(mode, inputs, outputs, mask, per_token_logps.detach(), chosen_term, rejected_term)

        if return_outputs:
            warnings.warn(
                "`return_outputs=True` is deprecated in DPOTrainer; the logits are recomputed with an extra forward.",
                FutureWarning,
                stacklevel=2,
            )
            with torch.no_grad():
                outputs = model(**model_kwargs)
        return (loss, outputs) if return_outputs else loss

    def _log_metrics(self, mode, inputs, outputs, mask, per_token_logps, chosen_term, rejected_term):
        """DPO's policy-side metrics under DPO's names, plus ``unlikelihood/*``; gathered across processes."""
        metrics = _trl_compat.metrics(self)[mode]
        gather = self.accelerator.gather_for_metrics
        seq_len = mask.size(1)
        chosen_mask, rejected_mask = mask.bool().chunk(2, dim=0)

        def token_mean(values: torch.Tensor, where: torch.Tensor) -> float:
            totals = gather(torch.stack([values[where].float().sum(), where.sum().float()]).view(1, 2)).sum(0)
            return (totals[0] / totals[1]).item() if totals[1] > 0 else 0.0

        metrics["entropy"].append(token_mean(outputs.entropy[:, -seq_len:].detach(), mask.bool()))
        if mode == "train":
            _trl_compat.add_train_tokens(self, gather(inputs["attention_mask"].sum()).sum().item())
        metrics["num_tokens"] = [_trl_compat.total_train_tokens(self)]
        chosen_logits, rejected_logits = outputs.mean_logits[:, -seq_len:].detach().chunk(2, dim=0)
        metrics["logits/chosen"].append(token_mean(chosen_logits, chosen_mask))
        metrics["logits/rejected"].append(token_mean(rejected_logits, rejected_mask))
        chosen_is_top1, _ = outputs.is_top1[:, -seq_len:].chunk(2, dim=0)
        metrics["mean_token_accuracy"].append(token_mean(chosen_is_top1, chosen_mask))

        chosen_logps, rejected_logps = per_token_logps.chunk(2, dim=0)
        # log p(y|x) summed over the completion, as DPO logs it
        metrics["logps/chosen"].append(gather((chosen_logps * chosen_mask).sum(dim=1)).mean().item())
        metrics["logps/rejected"].append(gather((rejected_logps * rejected_mask).sum(dim=1)).mean().item())
        metrics["unlikelihood/chosen_nll"].append(gather(chosen_term.detach()).mean().item())
        metrics["unlikelihood/rejected_loss"].append(gather(rejected_term.detach()).mean().item())
        metrics["unlikelihood/rejected_token_prob"].append(token_mean(rejected_logps.exp(), rejected_mask))


def _validate(dataset):
    """Check a preference dataset with the shared data layer (clear errors naming row and column) and return it
    normalised (explicit prompt, images cast); other dataset types (e.g. `IterableDataset`) go to TRL unchanged."""
    from ..data import validate_preference_dataset

    if isinstance(dataset, dict):
        return {name: _validate(split) for name, split in dataset.items()}
    return validate_preference_dataset(dataset) if isinstance(dataset, Dataset) else dataset
