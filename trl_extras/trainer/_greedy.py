"""ReMax's greedy rows: decoded in the samples' ``generate`` call where that is exact, else in a second greedy call.

What ``ReMaxTrainer`` wraps around GRPO's generation hooks, kept out of the trainer file: the logits processor and
the vLLM per-row sampling parameters of the one-call path, the greedy switch of the two-call path, and the context
managers that keep the greedy pass out of GRPO's metrics, token counters and staged reward logs.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from .. import _trl_compat


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


@dataclass
class GreedyRequest:
    """Greedy rows to decode in the same ``generate`` call as the samples (set by ``ReMaxTrainer._generate``)."""

    stride: int  # one greedy row per `stride` sample rows: prompt_ids[::stride]
    completion_ids: list[list[int]] | None = None  # filled by `_generate_single_turn`, replayed to the parent


@dataclass
class GreedyCompletions:
    """Greedy completions of one generation batch, on this process (``Rollout.greedy``).

    Greedy row ``j`` belongs to the local sample rows ``j * stride .. j * stride + stride - 1``; ``B // stride`` rows.
    """

    stride: int
    completion_ids: list[list[int]]  # B // stride token-id lists, stop token included as for the samples
    completions: list  # B // stride decoded completions (str, or a conversational message list)
    mean_length: float | None  # the parent's `completions/mean_length` of the greedy pass, None if not logged


@contextmanager
def with_logits_processor(model, processor: LogitsProcessor):
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
def with_greedy_vllm_rows(llm, first_row: int):
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


def dropout_active(model: torch.nn.Module) -> bool:
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


@contextmanager
def greedy_pass_metrics(trainer):
    """Keep what the parent's ``_generate`` logs for the greedy rows out of GRPO's metrics and token counters.

    Yields the metrics logged inside the block (they describe the greedy completions). ``num_generations=1``: one
    greedy completion per prompt.
    """
    saved = (trainer.num_generations, trainer.num_generations_eval, trainer.state.num_input_tokens_seen)
    saved_metrics = _trl_compat.metrics(trainer)
    trainer.num_generations = trainer.num_generations_eval = 1
    greedy_metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    _trl_compat.set_metrics(trainer, greedy_metrics)
    try:
        yield greedy_metrics
    finally:
        trainer.num_generations, trainer.num_generations_eval, trainer.state.num_input_tokens_seen = saved
        _trl_compat.set_metrics(trainer, saved_metrics)


@contextmanager
def greedy_decoding(trainer):
    """Switch the generation backend to greedy decoding for a second call of the parent's ``_generate``.

    vLLM: ``temperature=0`` is greedy in vLLM's sampler (server and colocate modes; the server receives it with the
    request). transformers (``generate`` and continuous batching): ``do_sample=False`` on the trainer's generation
    config, with the model in eval mode so that dropout (e.g. LoRA dropout) does not perturb the argmax.
    """
    saved = {}
    was_training = trainer.model.training
    if trainer.use_vllm:
        vllm = trainer.vllm_generation
        saved["vllm"] = (vllm.temperature, vllm.generation_kwargs)
        vllm.temperature = 0.0
        vllm.generation_kwargs = {**vllm.generation_kwargs, "temperature": 0.0}
    else:
        saved["transformers"] = (trainer.generation_config, trainer.generation_kwargs)
        # Sampling-only knobs do not change the argmax; unset, they also keep transformers from warning.
        greedy = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None, "min_p": None}
        trainer.generation_kwargs = {**trainer.generation_kwargs, **greedy}
        trainer.generation_config = copy.deepcopy(trainer.generation_config)
        trainer.generation_config.update(**greedy)
        trainer.model.eval()
    try:
        yield
    finally:
        trainer.model.train(was_training)
        if trainer.use_vllm:
            trainer.vllm_generation.temperature, trainer.vllm_generation.generation_kwargs = saved["vllm"]
        else:
            trainer.generation_config, trainer.generation_kwargs = saved["transformers"]


@contextmanager
def greedy_reward_logs(trainer):
    """Around the greedy rows' ``_calculate_rewards``: what reward functions log there describes the greedy rows.

    GRPO stages ``log_extra`` columns and ``log_metric`` scalars for the next log. One reward call cannot split a
    function's scalar metric (say, its batch accuracy) into a sample part and a greedy part, so the greedy rows are
    scored in their own call, with fresh staging: extra columns are dropped (they would not line up with the samples'
    rows), metrics are re-staged as ``remax/greedy/<name>`` beside the samples' own.
    """
    saved_extra, saved_metrics = _trl_compat.pending_logs(trainer)
    _trl_compat.set_pending_logs(trainer, defaultdict(list), defaultdict(list))
    try:
        yield
    finally:
        greedy_logged_metrics = _trl_compat.pending_logs(trainer)[1]
        _trl_compat.set_pending_logs(trainer, saved_extra, saved_metrics)
    for name, values in greedy_logged_metrics.items():
        saved_metrics[f"remax/greedy/{name}"].extend(values)
