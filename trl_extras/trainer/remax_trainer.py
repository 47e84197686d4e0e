"""ReMax: REINFORCE with a greedy-decoding baseline, on TRL's GRPO machinery."""

from __future__ import annotations

import textwrap
from typing import Any

import torch
from trl import GRPOTrainer
from trl.extras.profiling import profiling_context

from .. import _trl_compat
from ..checkpointing import CheckpointSafetyMixin
from ..data import validate_prompt_dataset
from ..losses.remax import remax_advantages, weighted_rewards
from ..quantization import keep_4bit_training_exact
from ..rewards import check_reward_funcs
from . import _rollout
from ._greedy import (
    GreedyCompletions,
    GreedyRequest,
    GreedyRowsLogitsProcessor,
    dropout_active,
    greedy_decoding,
    greedy_pass_metrics,
    greedy_reward_logs,
    with_greedy_vllm_rows,
    with_logits_processor,
)
from ._init import resolve_args, validate_datasets
from .remax_config import ReMaxConfig

__all__ = ["GreedyRowsLogitsProcessor", "ReMaxTrainer"]


class ReMaxTrainer(CheckpointSafetyMixin, GRPOTrainer):
    r"""
    Trainer for ReMax ([Li et al. 2023](https://arxiv.org/abs/2310.10505), Algorithm 2): REINFORCE whose baseline is
    the reward of the policy's own greedy completion, `A = r(x, a) - r(x, a*)`, with GRPO's loss (the advantage and
    its maths: [`~trl_extras.losses.remax.remax_advantages`]; the loss and how it maps onto GRPO: docs/remax.md). It
    takes [`~trl.GRPOTrainer`]'s arguments with a [`ReMaxConfig`] (`num_generations=1`, `scale_rewards="none"`,
    `loss_type="luspo"` by default); `tools`, `rollout_func` and `environment_factory` are refused (the greedy
    baseline would need a rollout of its own).

    Example:

    ```python
    from datasets import Dataset
    from trl_extras import ReMaxConfig, ReMaxTrainer
    from trl_extras.testing import build_tiny_causal_lm

    model_path = build_tiny_causal_lm("/tmp/tiny-lm")
    dataset = Dataset.from_dict({"prompt": ["The quick brown fox", "The capital of France is"] * 8})


    def reward_num_a(completions, **kwargs):
        return [completion.count("a") / 16 for completion in completions]


    args = ReMaxConfig("/tmp/remax", max_completion_length=16, per_device_train_batch_size=4, max_steps=2,
                       bf16=False, report_to="none")
    trainer = ReMaxTrainer(model=model_path, reward_funcs=reward_num_a, args=args, train_dataset=dataset)
    trainer.train()
    ```

    Overrides: `_generate_single_turn`, `_generate`, `_calculate_rewards`, `_generate_and_score_completions`.
    """

    _tag_names = ["trl", "trl-extras", "remax"]
    _name = "ReMax"
    _paper = {
        "title": "ReMax: A Simple, Effective, and Efficient Reinforcement Learning Method for Aligning Large Language "
        "Models",
        "id": "2310.10505",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @article{li2023remax,
                title        = {{ReMax: A Simple, Effective, and Efficient Reinforcement Learning Method for Aligning Large Language Models}},
                author       = {Ziniu Li and Tian Xu and Yushun Zhang and Zhihang Lin and Yang Yu and Ruoyu Sun and Zhi-Quan Luo},
                year         = 2023,
                eprint       = {arXiv:2310.10505},
            }"""),
    }

    def __init__(self, model, reward_funcs=None, args=None, train_dataset=None, eval_dataset=None, **kwargs):
        args = resolve_args(args, ReMaxConfig, model, "ReMaxTrainer", "ReMax")
        for name in ("tools", "rollout_func", "environment_factory"):
            if kwargs.get(name):
                raise NotImplementedError(
                    f"ReMaxTrainer does not support `{name}`: the greedy baseline would need a multi-turn rollout of "
                    "its own. Use GRPOTrainer for tool and environment rollouts."
                )
        train_dataset, eval_dataset = validate_datasets(validate_prompt_dataset, train_dataset, eval_dataset)
        reward_funcs = check_reward_funcs(reward_funcs)  # non-finite or non-numeric rewards name the function and row
        self._greedy_request: GreedyRequest | None = None  # lives inside one `_generate` call
        super().__init__(
            model, reward_funcs, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset, **kwargs
        )
        keep_4bit_training_exact(self.model)  # bitsandbytes' CPU repack off, TRL's bf16 adapter cast undone

    # ------------------------------------------------------------------------------------------------ generation
    def _num_generations(self) -> int:
        return self.num_generations if self.model.training else self.num_generations_eval

    def _greedy_in_same_call(self) -> bool:
        """Whether the greedy rows can be decoded in the samples' ``generate`` call (see ``GreedyRowsLogitsProcessor``).

        Needs a text-only model (image features do not split by row) and either vLLM in colocate mode with one rank per
        engine (per-row sampling parameters, see ``with_greedy_vllm_rows``) or the plain transformers ``generate`` path,
        sampling or greedy search without beams, no watermark (it is applied after custom processors), and no dropout
        in the forward: the greedy baseline is the argmax of the policy itself, which the separate pass decodes with
        the model in eval mode, while the samples are drawn as GRPO draws them (with dropout if the model has it).
        Otherwise the greedy completions come from a second call (``greedy_decoding``). Set ``disable_dropout=True``
        to get one call with a model that has dropout.
        """
        if _trl_compat.is_vlm(self) or self.use_transformers_continuous_batching:
            return False
        if self.use_vllm:  # one request with per-row sampling parameters: colocate, one rank per engine
            return self.vllm_mode == "colocate" and self.vllm_generation.tensor_parallel_size == 1
        config = self.generation_config
        return not (
            (config.num_beams or 1) > 1 or config.watermarking_config is not None or dropout_active(self.model)
        )

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        request = self._greedy_request
        if request is None:  # the two-call path, or a caller other than ReMax's `_generate`
            return super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )
        if request.completion_ids is not None:  # the greedy rows' `_generate`: they were decoded with the samples
            return request.completion_ids, None
        # One call on the sample rows followed by the greedy rows: transformers makes the latter argmax with a logits
        # processor, vLLM (colocate) gets them in the same request with temperature 0.
        num_samples = len(prompt_ids)
        if self.use_vllm:
            greedy_rows = with_greedy_vllm_rows(self.vllm_generation.llm, first_row=num_samples)
        else:
            unwrapped = self.accelerator.unwrap_model(self.model_wrapped)  # what the parent's generate unwraps to
            greedy_rows = with_logits_processor(unwrapped, GreedyRowsLogitsProcessor(first_row=num_samples))
        with greedy_rows:
            completion_ids, logprobs = super()._generate_single_turn(
                [*prompt_ids, *prompt_ids[:: request.stride]], images, multimodal_fields, num_generations
            )
        request.completion_ids = completion_ids[num_samples:]
        return completion_ids[:num_samples], (logprobs[:num_samples] if logprobs is not None else None)

    def _generate(self, prompts: list):
        # Prompts arrive in groups of `num_generations` copies. Decode one greedy completion per group when the local
        # batch holds whole groups (always for num_generations=1); when groups straddle processes, decode one per row
        # and use each group's first (same prompt, same argmax) so that every process scores the same number of rows.
        num_generations = self._num_generations()
        stride = num_generations if len(prompts) % num_generations == 0 else 1
        if self._greedy_in_same_call():
            # The samples' call decodes the greedy rows too (`_generate_single_turn`); the parent's `_generate` then
            # runs on the greedy rows' prompts with those completions, so they are decoded as the samples are.
            self._greedy_request = GreedyRequest(stride)
            try:
                outputs = super()._generate(prompts)
                with greedy_pass_metrics(self) as greedy_metrics:
                    _, completion_ids, _, completions, *_ = super()._generate(prompts[::stride])
            finally:
                self._greedy_request = None
        else:
            outputs = super()._generate(prompts)
            with profiling_context(self, "greedy_generate"), greedy_pass_metrics(self) as greedy_metrics:
                with greedy_decoding(self):
                    _, completion_ids, _, completions, *_ = super()._generate(prompts[::stride])
        # The parent logged the greedy lengths under "eval" when the model was switched to eval mode for the pass
        lengths = [
            *greedy_metrics["train"]["completions/mean_length"],
            *greedy_metrics["eval"]["completions/mean_length"],
        ]
        greedy = GreedyCompletions(stride, completion_ids, completions, lengths[0] if lengths else None)
        _rollout.record(self).greedy = greedy
        return outputs

    # --------------------------------------------------------------------------------------------------- rewards
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)  # (B, K)
        record = _rollout.get(self, reader="ReMaxTrainer._calculate_rewards")
        greedy = record.consume("greedy", reader="ReMaxTrainer._calculate_rewards")
        stride, num_generations = greedy.stride, self._num_generations()

        # The greedy completions, scored by the same reward functions with the prompts' dataset columns (a second call:
        # see `greedy_reward_logs` for why one call over both cannot keep the reward functions' own logs apart)
        with greedy_reward_logs(self):
            greedy_rewards_per_func = super()._calculate_rewards(
                inputs[::stride], prompts[::stride], greedy.completions, greedy.completion_ids
            )  # (B // stride, K), gathered over processes
        greedy_rewards_per_func = greedy_rewards_per_func[:: num_generations // stride]  # (B // G, K): one per prompt
        record.rewards_per_func, record.greedy_rewards_per_func = rewards_per_func, greedy_rewards_per_func

        # The completions table (log_completions=True) shows each sample next to its prompt's greedy completion.
        if self.log_completions:
            greedy_reward = weighted_rewards(greedy_rewards_per_func, self.reward_weights)
            local = self._local_slice(len(prompts))
            _trl_compat.log_completion_extra(
                self, "greedy_completion", [c for c in greedy.completions for _ in range(stride)][: len(prompts)]
            )
            _trl_compat.log_completion_extra(
                self, "greedy_reward", greedy_reward.repeat_interleave(num_generations)[local].tolist()
            )
        if greedy.mean_length is not None:
            mode = "train" if self.model.training else "eval"
            _trl_compat.metrics(self)[mode]["remax/greedy_mean_length"].append(greedy.mean_length)
        return rewards_per_func

    def _local_slice(self, local_size: int) -> slice:
        start = self.accelerator.process_index * local_size
        return slice(start, start + local_size)

    # ------------------------------------------------------------------------------------------------ advantages
    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        # GRPO computes its group-normalised advantages inline in this long method. We call it unchanged and swap
        # `advantages` for ReMax's, from the rewards `_calculate_rewards` recorded: r(sample) - r(greedy).
        _rollout.begin(self)
        output = super()._generate_and_score_completions(inputs)
        reader = "ReMaxTrainer._generate_and_score_completions"
        rewards_per_func, greedy_rewards_per_func = _rollout.end(self, reader).consume(
            "rewards_per_func", "greedy_rewards_per_func", reader=reader
        )
        num_generations = self._num_generations()
        advantages = remax_advantages(
            rewards_per_func, greedy_rewards_per_func, self.reward_weights, num_generations, self.scale_rewards
        )  # (B_global,)
        output["advantages"] = advantages[self._local_slice(len(output["advantages"]))]

        # The completions table logged GRPO's advantages for this batch: replace them with ours.
        logged = _trl_compat.completion_logs(self)["advantages"]
        replace = min(len(advantages), len(logged))
        for _ in range(replace):
            logged.pop()
        logged.extend(advantages[len(advantages) - replace :].tolist())

        mode = "train" if self.model.training else "eval"
        greedy = weighted_rewards(greedy_rewards_per_func, self.reward_weights)  # (B // G,)
        difference = weighted_rewards(
            rewards_per_func - greedy_rewards_per_func.repeat_interleave(num_generations, dim=0), self.reward_weights
        )  # (B,), NaN when unscorable
        scored = difference[~torch.isnan(difference)]
        metrics = _trl_compat.metrics(self)[mode]
        metrics["remax/reward_greedy"].append(torch.nanmean(greedy).item())
        metrics["remax/advantage_mean"].append(advantages.mean().item())
        metrics["remax/advantage_std"].append(advantages.std().item() if advantages.numel() > 1 else 0.0)
        metrics["remax/frac_beats_greedy"].append(
            (scored > 0).float().mean().item() if scored.numel() else float("nan")
        )
        return output
