"""Unlikelihood training on preference pairs, as a reference-free subclass of TRL's ``DPOTrainer``."""

from __future__ import annotations

import textwrap
import warnings

import torch
from trl import DPOTrainer

from .. import _trl_compat
from ..checkpointing import CheckpointSafetyMixin
from ..data import validate_preference_dataset
from ..losses.unlikelihood import sequence_unlikelihood_loss, token_unlikelihood_loss
from ..quantization import keep_4bit_training_exact
from ._init import resolve_args, validate_datasets
from ._length_check import PreferenceLengthCheck
from .unlikelihood_config import UnlikelihoodConfig

# batch keys the DPO collators add that are not model inputs
_NON_MODEL_KEYS = frozenset({"completion_mask", "ref_chosen_logps", "ref_rejected_logps"})


class UnlikelihoodTrainer(CheckpointSafetyMixin, PreferenceLengthCheck, DPOTrainer):
    r"""
    Unlikelihood training on preference pairs with no reference model: raise the likelihood of the chosen
    completion and lower that of the rejected one, with the token-level unlikelihood loss of Welleck et al. 2019
    ([arXiv:1908.04319](https://arxiv.org/abs/1908.04319), `unlikelihood_type="token"`) or the "Unlikelihood"
    baseline of the DPO paper ([arXiv:2305.18290](https://arxiv.org/abs/2305.18290), `"sequence"`); the objectives
    are in `trl_extras.losses.unlikelihood`. A drop-in replacement for [`~trl.DPOTrainer`] (same datasets,
    `peft_config` / `quantization_config` / PEFT-model and vision-language inputs, collators and metric names, plus
    `unlikelihood/*`), except that `ref_model` is refused and no reference model is ever loaded or run: DPOTrainer
    has no switch for that, so it is given a placeholder reference, which loads nothing and which the `ref_model`
    attribute reads as `None` (`_trl_compat.NoReferenceModel`), and its `_compute_loss`, which runs the reference
    forward inline, is replaced by the policy-only one.

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

    Overrides: `__init__`, `_compute_loss`, `_prepare_dataset` (from `PreferenceLengthCheck`), `ref_model`.
    """

    ref_model = _trl_compat.NoReferenceModel()
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

    def __init__(self, model, ref_model: None = None, args: UnlikelihoodConfig | None = None, **kwargs):
        if ref_model is not None:
            raise ValueError(
                "UnlikelihoodTrainer uses no reference model, but `ref_model` was given. Drop the `ref_model` "
                "argument (and do not load one: it only costs memory)."
            )
        args = resolve_args(args, UnlikelihoodConfig, model, "UnlikelihoodTrainer", "Unlikelihood")
        kwargs["train_dataset"], kwargs["eval_dataset"] = validate_datasets(
            validate_preference_dataset, kwargs.get("train_dataset"), kwargs.get("eval_dataset")
        )
        # given a `ref_model`, DPOTrainer loads none (nor copies a PEFT adapter); `self.ref_model` reads None
        super().__init__(model, _trl_compat.NO_REFERENCE_MODEL, args, **kwargs)
        keep_4bit_training_exact(self.model)  # bitsandbytes' CPU repack off, TRL's bf16 adapter cast undone

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
