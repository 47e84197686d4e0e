"""ReMax: REINFORCE with a greedy-decoding baseline, on TRL's GRPO machinery."""

from __future__ import annotations

import copy
import textwrap
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset, IterableDataset
from transformers import LogitsProcessor, LogitsProcessorList, TrainerCallback
from trl import GRPOTrainer
from trl.extras.profiling import profiling_context
from trl.trainer.utils import get_config_model_id

from .. import _trl_compat
from ..checkpointing import CheckpointSafetyMixin
from ..data import validate_prompt_dataset
from ..losses.remax import remax_advantages, weighted_rewards
from ..quantization import keep_4bit_training_exact
from ..rewards import check_reward_funcs
from .remax_config import ReMaxConfig


class GreedyRowsLogitsProcessor(LogitsProcessor):
    """Turns the rows ``first_row:`` of a generation batch into greedy decoding while the rows before it sample.

    transformers applies a custom logits processor after its own processors (repetition penalty, `min_new_tokens`,
    bad words, suppressed tokens, ...) and before the sampling warpers (temperature, top-k, top-p, min-p, typical-p).
    So the scores this sees are exactly the ones `generate(do_sample=False)` takes the argmax of, and it replaces a
    greedy row by a one-hot row (0 at that argmax, -inf elsewhere). Every warper keeps the highest-scoring token of a
    row, temperature maps 0 to 0 and -inf to -inf, and the softmax of a one-hot row puts probability 1 on its token,
    so the sampler then picks the argmax: the greedy rows decode as `generate(do_sample=False)` would, token for
    token, in the same call as the samples.
    """

    def __init__(self, first_row: int):
        self.first_row = first_row

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        greedy = scores[self.first_row :]  # (B_greedy, V)
        one_hot = torch.full_like(greedy, float("-inf")).scatter_(-1, greedy.argmax(dim=-1, keepdim=True), 0.0)
        return torch.cat([scores[: self.first_row], one_hot])  # (B, V)


@contextmanager
def _with_logits_processor(model, processor: LogitsProcessor):
    """Adds ``processor`` to every ``model.generate`` call inside the block (an instance attribute, removed after)."""
    own = vars(model).get("generate")
    generate = model.generate

    def generate_with_processor(*args, logits_processor=None, **kwargs):
        return generate(*args, logits_processor=LogitsProcessorList([*(logits_processor or []), processor]), **kwargs)

    model.generate = generate_with_processor
    try:
        yield
    finally:
        if own is None:
            del model.generate
        else:
            model.generate = own


@contextmanager
def _with_greedy_vllm_rows(llm, first_row: int):
    """Inside the block, ``llm.generate`` gives the prompts ``first_row:`` greedy sampling parameters (vLLM's
    temperature 0: argmax of the logits after its penalties) and the others the parameters it was called with."""
    own = vars(llm).get("generate")
    generate = llm.generate

    def generate_with_greedy_rows(prompts, sampling_params=None, *args, **kwargs):
        greedy = sampling_params.clone()
        greedy.temperature, greedy.top_p, greedy.top_k, greedy.min_p = 0.0, 1.0, 0, 0.0
        per_row = [sampling_params] * first_row + [greedy] * (len(prompts) - first_row)
        return generate(prompts, *args, sampling_params=per_row, **kwargs)

    llm.generate = generate_with_greedy_rows
    try:
        yield
    finally:
        if own is None:
            del llm.generate
        else:
            llm.generate = own


def _dropout_active(model: torch.nn.Module) -> bool:
    """Whether a forward of ``model`` as it is now applies dropout (``nn.Dropout`` modules or attention dropout)."""
    for module in model.modules():
        if not module.training:
            continue
        if isinstance(module, torch.nn.modules.dropout._DropoutNd) and module.p > 0:
            return True
        rate = getattr(module, "attention_dropout", 0.0)
        if isinstance(rate, float) and rate > 0:
            return True
    return False


@dataclass
class _GreedyRequest:
    """Greedy rows to decode in the same ``generate`` call as the samples (set by ``_generate``)."""

    stride: int  # one greedy row per `stride` sample rows: prompt_ids[::stride]
    completion_ids: list[list[int]] | None = None  # filled by `_generate_single_turn`, replayed to the parent


@dataclass
class _GreedyBatch:
    """Greedy completions of one generation batch, kept from ``_generate`` until ``_calculate_rewards`` scores them."""

    stride: int  # greedy row j belongs to local sample rows j*stride .. j*stride+stride-1
    completion_ids: list[list[int]]
    completions: list
    mean_length: float | None


def _validated(dataset):
    """Prompt-only datasets are checked up front: a bad row raises an error naming the row and column."""
    return validate_prompt_dataset(dataset) if isinstance(dataset, Dataset) else dataset


class ReMaxTrainer(CheckpointSafetyMixin, GRPOTrainer):
    r"""
    Trainer for ReMax, REINFORCE with the reward of the greedy completion as the baseline.

    Paper: [ReMax: A Simple, Effective, and Efficient Reinforcement Learning Method for Aligning Large Language
    Models](https://arxiv.org/abs/2310.10505) (Li et al. 2023), Algorithm 2. For each prompt `x` it samples a
    completion `a`, decodes the greedy completion `a*` without gradients, scores both with the same reward and
    minimises

        loss = -(sum_t log pi_theta(a_t | x, a_<t)) * (r(x, a) - r(x, a*)),   averaged over the batch,

    whose gradient is `1/N sum_i sum_t grad log pi_theta(a_t^i | x^i, a_<t^i) (r(x^i, a^i) - r(x^i, a*^i))`. No value
    model and no group of samples are needed: `num_generations=1` is the paper's setting; with more, the samples of a
    prompt share its greedy baseline.

    It takes the same arguments as [`~trl.GRPOTrainer`] (reward functions and reward models with weights, PEFT, vLLM,
    `beta` KL to a reference, clipping with `num_iterations > 1`, every `loss_type`), with a [`ReMaxConfig`]. The
    default `loss_type="luspo"` sums each completion's token terms and averages over completions, which is Algorithm
    2's aggregation; on-policy its gradient equals the paper's (the GRPO surrogate uses the ratio `pi / pi_old`, equal
    to 1, in place of `log pi`, so the logged loss value is `-mean(A * |a|)` rather than `-mean(A * log pi(a))`).

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

    Hooks overridden (each calls the parent and changes only its inputs or outputs):

    - `_generate_single_turn`: appends one greedy row per prompt to the samples' batch and decodes both in the same
      call. transformers `generate`: [`GreedyRowsLogitsProcessor`] makes the greedy rows the argmax of the processed
      logits (repetition penalty and the other processors included, the sampling warpers excluded), i.e. what
      `generate(do_sample=False)` would decode. vLLM colocate: the same request, with per-row sampling parameters
      (temperature 0 for the greedy rows). It returns the sample rows to the parent and keeps the greedy ones.
    - `_generate`: after the parent's `_generate` of the samples, runs the parent's `_generate` again on one prompt
      per group, replaying the greedy rows (one call) or, where one call cannot be exact (vLLM server mode or tensor
      parallelism, continuous batching, VLMs, beams, watermarking, a model with active dropout), decoding them in a
      second call with greedy decoding
      switched on (transformers `do_sample=False` with the model in eval mode, or vLLM `temperature=0`). Either way
      the length limit, stop tokens and decoding of the completions are the samples'. The greedy rows leave the
      generation metrics and token counters untouched and log their mean length as `remax/greedy_mean_length`.
    - `_calculate_rewards`: scores the samples (parent), then the greedy completions with the same reward functions,
      weights and reward models (parent again, with the prompts' dataset columns).
    - `_generate_and_score_completions`: GRPO forms advantages inline in this 600-line method, so rather than copy it
      we call it and replace its `advantages` with `r(sample) - r(greedy)` (see
      [`~trl_extras.losses.remax.remax_advantages`]), then log `remax/reward_greedy`, `remax/advantage_mean`,
      `remax/advantage_std` and `remax/frac_beats_greedy` next to GRPO's `reward`. The loss (`_compute_loss`) is
      GRPO's, unchanged.

    Reward functions returning `None` are handled as in GRPO: the difference is taken per reward function, a function
    that returned `None` for the sample or its greedy completion is left out of that row, and a row no function
    scores both ways gets advantage 0. Tools, `rollout_func` and `environment_factory` are not supported: the greedy
    baseline would need a rollout of its own.
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

    def __init__(
        self,
        model,
        reward_funcs=None,
        args: ReMaxConfig | None = None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset=None,
        processing_class=None,
        reward_processing_classes=None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple[torch.optim.Optimizer | None, torch.optim.lr_scheduler.LambdaLR | None] = (None, None),
        quantization_config=None,
        peft_config=None,
        tools: list[Callable] | None = None,
        rollout_func=None,
        environment_factory=None,
    ):
        if args is None:
            model_name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = ReMaxConfig(f"{model_name.split('/')[-1]}-ReMax")
        elif not isinstance(args, ReMaxConfig):
            raise TypeError(
                f"`args` must be a ReMaxConfig, got {type(args).__name__}. ReMaxConfig changes GRPO's defaults "
                "(num_generations=1, scale_rewards='none', loss_type='luspo') and allows one sample per prompt; "
                "build it with the same fields: ReMaxConfig(**grpo_config.to_dict()) keeps your values."
            )
        for name, value in (
            ("tools", tools),
            ("rollout_func", rollout_func),
            ("environment_factory", environment_factory),
        ):
            if value:
                raise NotImplementedError(
                    f"ReMaxTrainer does not support `{name}`: the greedy baseline would need a multi-turn rollout of "
                    "its own. Use GRPOTrainer for tool and environment rollouts."
                )
        train_dataset = _validated(train_dataset)
        if isinstance(eval_dataset, dict):
            eval_dataset = {name: _validated(dataset) for name, dataset in eval_dataset.items()}
        else:
            eval_dataset = _validated(eval_dataset)
        reward_funcs = check_reward_funcs(reward_funcs)  # non-finite or non-numeric rewards name the function and row
        self._greedy_request: _GreedyRequest | None = None
        self._greedy_batch: _GreedyBatch | None = None
        self._remax_rewards: tuple[torch.Tensor, torch.Tensor] | None = None
        super().__init__(
            model,
            reward_funcs,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            reward_processing_classes=reward_processing_classes,
            callbacks=callbacks,
            optimizers=optimizers,
            quantization_config=quantization_config,
            peft_config=peft_config,
        )
        keep_4bit_training_exact(self.model)  # bitsandbytes' CPU repack off, TRL's bf16 adapter cast undone

    # ------------------------------------------------------------------------------------------------ generation
    def _num_generations(self) -> int:
        return self.num_generations if self.model.training else self.num_generations_eval

    def _greedy_in_same_call(self) -> bool:
        """Whether the greedy rows can be decoded in the samples' ``generate`` call (see ``GreedyRowsLogitsProcessor``).

        Needs a text-only model (image features do not split by row) and either vLLM in colocate mode with one rank per
        engine (per-row sampling parameters, see ``_with_greedy_vllm_rows``) or the plain transformers ``generate`` path,
        sampling or greedy search without beams, no watermark (it is applied after custom processors), and no dropout
        in the forward: the greedy baseline is the argmax of the policy itself, which the separate pass decodes with
        the model in eval mode, while the samples are drawn as GRPO draws them (with dropout if the model has it).
        Otherwise the greedy completions come from a second call (``_greedy_decoding``). Set ``disable_dropout=True``
        to get one call with a model that has dropout.
        """
        if _trl_compat.is_vlm(self) or self.use_transformers_continuous_batching:
            return False
        if self.use_vllm:  # one request with per-row sampling parameters: colocate, one rank per engine
            return self.vllm_mode == "colocate" and self.vllm_generation.tensor_parallel_size == 1
        config = self.generation_config
        return not (
            (config.num_beams or 1) > 1 or config.watermarking_config is not None or _dropout_active(self.model)
        )

    @contextmanager
    def _greedy_metrics(self):
        """Keep what the parent's ``_generate`` logs for the greedy rows out of GRPO's metrics and token counters.

        Yields the metrics logged inside the block (they describe the greedy completions). ``num_generations=1``:
        one greedy completion per prompt.
        """
        saved = (self.num_generations, self.num_generations_eval, self.state.num_input_tokens_seen)
        saved_metrics = _trl_compat.metrics(self)
        self.num_generations = self.num_generations_eval = 1
        greedy_metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        _trl_compat.set_metrics(self, greedy_metrics)
        try:
            yield greedy_metrics
        finally:
            self.num_generations, self.num_generations_eval, self.state.num_input_tokens_seen = saved
            _trl_compat.set_metrics(self, saved_metrics)

    @contextmanager
    def _greedy_decoding(self):
        """Switch the generation backend to greedy decoding for a second call of the parent's ``_generate``.

        vLLM: ``temperature=0`` is greedy in vLLM's sampler (server and colocate modes; the server receives it with
        the request). transformers (``generate`` and continuous batching): ``do_sample=False`` on the trainer's
        generation config, with the model in eval mode so that dropout (e.g. LoRA dropout) does not perturb the argmax.
        """
        saved = {}
        was_training = self.model.training
        if self.use_vllm:
            vllm = self.vllm_generation
            saved["vllm"] = (vllm.temperature, vllm.generation_kwargs)
            vllm.temperature = 0.0
            vllm.generation_kwargs = {**vllm.generation_kwargs, "temperature": 0.0}
        else:
            saved["transformers"] = (self.generation_config, self.generation_kwargs)
            # Sampling-only knobs do not change the argmax; unset, they also keep transformers from warning.
            greedy = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None, "min_p": None}
            self.generation_kwargs = {**self.generation_kwargs, **greedy}
            self.generation_config = copy.deepcopy(self.generation_config)
            self.generation_config.update(**greedy)
            self.model.eval()
        try:
            yield
        finally:
            self.model.train(was_training)
            if self.use_vllm:
                self.vllm_generation.temperature, self.vllm_generation.generation_kwargs = saved["vllm"]
            else:
                self.generation_config, self.generation_kwargs = saved["transformers"]

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
            greedy_rows = _with_greedy_vllm_rows(self.vllm_generation.llm, first_row=num_samples)
        else:
            unwrapped = self.accelerator.unwrap_model(self.model_wrapped)  # what the parent's generate unwraps to
            greedy_rows = _with_logits_processor(unwrapped, GreedyRowsLogitsProcessor(first_row=num_samples))
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
            self._greedy_request = _GreedyRequest(stride)
            try:
                outputs = super()._generate(prompts)
                with self._greedy_metrics() as greedy_metrics:
                    _, completion_ids, _, completions, *_ = super()._generate(prompts[::stride])
            finally:
                self._greedy_request = None
        else:
            outputs = super()._generate(prompts)
            with (
                profiling_context(self, "greedy_generate"),
                self._greedy_metrics() as greedy_metrics,
                self._greedy_decoding(),
            ):
                _, completion_ids, _, completions, *_ = super()._generate(prompts[::stride])
        # The parent logged the greedy lengths under "eval" when the model was switched to eval mode for the pass
        lengths = [
            *greedy_metrics["train"]["completions/mean_length"],
            *greedy_metrics["eval"]["completions/mean_length"],
        ]
        self._greedy_batch = _GreedyBatch(stride, completion_ids, completions, lengths[0] if lengths else None)
        return outputs

    # --------------------------------------------------------------------------------------------------- rewards
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)  # (B, K)
        greedy, self._greedy_batch = self._greedy_batch, None
        if greedy is None:
            raise RuntimeError("ReMaxTrainer._calculate_rewards was called without a greedy pass from _generate.")
        stride, num_generations = greedy.stride, self._num_generations()

        # Score the greedy completions with the same reward functions and the prompts' dataset columns. What the
        # reward functions log through `log_extra`/`log_metric` on this call describes the greedy completions: extra
        # columns are dropped (they would not line up with the samples' rows), metrics are kept as `remax/greedy/*`.
        saved_extra, saved_metrics = _trl_compat.pending_logs(self)
        _trl_compat.set_pending_logs(self, defaultdict(list), defaultdict(list))
        try:
            greedy_rewards_per_func = super()._calculate_rewards(
                inputs[::stride], prompts[::stride], greedy.completions, greedy.completion_ids
            )  # (B // stride, K), gathered over processes
        finally:
            greedy_logged_metrics = _trl_compat.pending_logs(self)[1]
            _trl_compat.set_pending_logs(self, saved_extra, saved_metrics)
        for name, values in greedy_logged_metrics.items():
            _trl_compat.pending_logs(self)[1][f"remax/greedy/{name}"].extend(values)
        greedy_rewards_per_func = greedy_rewards_per_func[:: num_generations // stride]  # (B // G, K): one per prompt
        self._remax_rewards = (rewards_per_func, greedy_rewards_per_func)

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
        # `advantages` for ReMax's, from the rewards `_calculate_rewards` kept: r(sample) - r(greedy).
        output = super()._generate_and_score_completions(inputs)
        rewards_per_func, greedy_rewards_per_func = self._remax_rewards
        self._remax_rewards = None
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
        _trl_compat.metrics(self)[mode]["remax/reward_greedy"].append(torch.nanmean(greedy).item())
        _trl_compat.metrics(self)[mode]["remax/advantage_mean"].append(advantages.mean().item())
        _trl_compat.metrics(self)[mode]["remax/advantage_std"].append(
            advantages.std().item() if advantages.numel() > 1 else 0.0
        )
        _trl_compat.metrics(self)[mode]["remax/frac_beats_greedy"].append(
            (scored > 0).float().mean().item() if scored.numel() else float("nan")
        )
        return output
