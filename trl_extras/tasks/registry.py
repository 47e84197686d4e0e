"""The ``builtin:`` names that configs use for the bundled tasks, their models and their reward functions.

| name | kind | what |
| --- | --- | --- |
| ``builtin:sentiment`` | dataset | movie-review task; subsets ``sft``, ``preference``, ``prompt`` (``dataset_config``) |
| ``builtin:sentiment`` | reward function | the task's ground-truth reward (``reward_funcs: [builtin:sentiment]``) |
| ``builtin:sentiment-sft`` | model | tiny policy SFT-trained on the reviews (built on first use, cached) |
| ``builtin:sentiment-base`` | model | the same tiny policy, untrained (the starting point of ``trl-extras sft``) |
| ``builtin:sentiment-rm`` | model | tiny reward model trained on the ground-truth preference pairs (cached) |
| ``builtin:shapes`` | dataset | coloured squares; subsets ``vision-preference`` (mDPO), ``image-preference`` (Diffusion-DPO) |
| ``builtin:tiny-vlm`` | model | tiny Llava-style vision-language model, random weights (``trl_extras.testing``) |
| ``builtin:tiny-diffusion`` | model | tiny Stable-Diffusion-style pipeline, random weights (``trl_extras.testing``) |

Anything without the ``builtin:`` prefix is not ours: it goes to ``from_pretrained`` / ``load_dataset`` unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from . import evaluation, sentiment, shapes
from ._cache import cached_build, content_hash, source_hash

__all__ = [
    "BUILTIN_PREFIX",
    "Evaluation",
    "builtin_names",
    "evaluation_for",
    "is_builtin",
    "load_builtin_dataset",
    "resolve_builtin_model",
    "resolve_builtin_reward",
]

BUILTIN_PREFIX = "builtin:"


def _tiny_vlm_path() -> str:
    from trl_extras.testing import build_tiny_vlm

    return cached_build(
        "tiny-vlm", content_hash(source_hash(build_tiny_vlm)), lambda d: build_tiny_vlm(d, family="llava")
    )


def _tiny_diffusion_path() -> str:
    from trl_extras.testing import build_tiny_diffusion_pipeline

    key = content_hash(source_hash(build_tiny_diffusion_pipeline))
    return cached_build("tiny-diffusion", key, lambda d: build_tiny_diffusion_pipeline(d))


_MODELS: dict[str, Callable[[], str]] = {
    "sentiment-sft": sentiment.default_policy_path,
    "sentiment-base": sentiment.base_policy_path,
    "sentiment-rm": sentiment.default_reward_model_path,
    "tiny-vlm": _tiny_vlm_path,
    "tiny-diffusion": _tiny_diffusion_path,
}
_REWARDS: dict[str, Callable] = {"sentiment": sentiment.ground_truth_reward}
_DATASETS: dict[str, dict[str, Callable]] = {
    "sentiment": {
        "sft": lambda split: sentiment.build_sft_dataset(960 if split == "train" else 64, split=split),
        "preference": lambda split: sentiment.build_preference_dataset(256 if split == "train" else 64, split=split),
        "prompt": lambda split: sentiment.build_prompt_dataset(split=split),
    },
    "shapes": {
        "vision-preference": lambda split: shapes.build_vision_preference_dataset(
            64 if split == "train" else 16, split=split
        ),
        "image-preference": lambda split: shapes.build_image_preference_dataset(
            64 if split == "train" else 16, split=split
        ),
    },
}


def is_builtin(name: str | None) -> bool:
    return isinstance(name, str) and name.startswith(BUILTIN_PREFIX)


def _strip(name: str) -> str:
    return name[len(BUILTIN_PREFIX) :]


def builtin_names(kind: str) -> list[str]:
    """The ``builtin:`` names of one kind: ``"model"``, ``"dataset"`` or ``"reward"``."""
    table = {"model": _MODELS, "dataset": _DATASETS, "reward": _REWARDS}[kind]
    return [BUILTIN_PREFIX + name for name in table]


def _unknown(name: str, kind: str) -> ValueError:
    return ValueError(f"unknown built-in {kind} {name!r}; the built-in {kind}s are: {', '.join(builtin_names(kind))}")


def resolve_builtin_model(name: str) -> str:
    """Local directory of a built-in model, building (and caching) it on first use."""
    build = _MODELS.get(_strip(name))
    if build is None:
        raise _unknown(name, "model")
    return build()


def resolve_builtin_reward(name: str) -> Callable:
    """The reward function of a built-in task."""
    reward = _REWARDS.get(_strip(name))
    if reward is None:
        raise _unknown(name, "reward")
    return reward


def load_builtin_dataset(name: str, subset: str):
    """``DatasetDict`` with ``train`` and ``test`` splits of one subset of a built-in task."""
    from datasets import DatasetDict

    subsets = _DATASETS.get(_strip(name))
    if subsets is None:
        raise _unknown(name, "dataset")
    build = subsets.get(subset)
    if build is None:
        raise ValueError(f"{name} has no subset {subset!r} (dataset_config); its subsets are: {', '.join(subsets)}")
    return DatasetDict({"train": build("train"), "test": build("test")})


@dataclass
class Evaluation:
    """One number measured on a trainer's model before and after training, with a few samples to show next to it."""

    description: str
    measure: Callable  # (trainer) -> (value, [sample lines])
    higher_is_better: bool = True
    value_format: str = "+.4f"
    calls_trainer_evaluate: bool = False  # `measure` runs `Trainer.evaluate`, which DeepSpeed refuses before `train`

    def format(self, value: float) -> str:
        return format(value, self.value_format)


@contextlib.contextmanager
def _text_model(trainer):
    """The trainer's model, whole, and its tokenizer. Under DeepSpeed ZeRO-3 the weights are partitioned (at load,
    by ``zero.Init``, and in the engine after training): TRL's ``unwrap_model_for_generation`` gathers them (and takes
    the engine's hooks off) for the measurement, before training as after it."""
    tokenizer = getattr(trainer.processing_class, "tokenizer", trainer.processing_class)
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    if plugin is None or plugin.zero_stage != 3:
        yield trainer.model, tokenizer
        return
    from trl.models import unwrap_model_for_generation

    model = getattr(trainer, "model_wrapped", None) or trainer.model
    kwargs = trainer.args.gradient_checkpointing_kwargs
    with unwrap_model_for_generation(model, trainer.accelerator, gradient_checkpointing_kwargs=kwargs) as unwrapped:
        yield unwrapped, tokenizer


def evaluation_for(dataset_name: str, role: str, *, num_samples: int = 32, max_new_tokens: int = 40):
    """The before/after measurement for a built-in dataset and the role of the trained model, or ``None``.

    ``role``: ``"policy"`` (a generating model trained for the task's reward), ``"lm"`` (a language model trained by
    SFT), ``"reward_model"`` (a sequence classifier trained on preference pairs), ``"vlm_policy"`` (a vision-language
    model trained on image-question preference pairs) or ``"diffusion"`` (a text-to-image UNet trained on image pairs).
    """
    if not is_builtin(dataset_name) or num_samples <= 0:
        return None
    task = _strip(dataset_name)
    if task == "sentiment":
        return _sentiment_evaluation(role, num_samples, max_new_tokens)
    if task == "shapes":
        return _shapes_evaluation(role, num_samples)
    return None


def _sentiment_evaluation(role: str, num_samples: int, max_new_tokens: int):
    if role == "policy":
        prompts = sentiment.eval_prompts()
        per_prompt = max(1, -(-num_samples // len(prompts)))
        prompts = prompts[: max(1, num_samples // per_prompt)]

        def measure(trainer):
            with _text_model(trainer) as (model, tokenizer):
                samples = evaluation.sample_completions(
                    model, tokenizer, prompts, num_samples=per_prompt, max_new_tokens=max_new_tokens
                )
            value = evaluation.mean_reward(samples, sentiment.ground_truth_reward)
            return value, [prompt + completion for prompt, completion in samples[::per_prompt][:2]]

        description = (
            f"ground-truth reward of sampled reviews (mean of {len(prompts) * per_prompt} samples, "
            f"{len(prompts)} held-out openings; range -1..1)"
        )
        return Evaluation(description, measure)
    if role == "lm":
        rows = sentiment.build_sft_dataset(num_samples, split="test")

        def measure(trainer):
            with _text_model(trainer) as (model, tokenizer):
                return evaluation.perplexity(model, tokenizer, rows["prompt"], rows["completion"]), []

        return Evaluation(f"perplexity of {len(rows)} held-out reviews", measure, False, ".2f")
    if role == "reward_model":
        rows = sentiment.build_preference_dataset(max(num_samples, 64), seed=7, split="test").to_list()

        def measure(trainer):
            with _text_model(trainer) as (model, tokenizer):
                return evaluation.pairwise_accuracy(model, tokenizer, rows), []

        return Evaluation(f"accuracy on {len(rows)} held-out ground-truth preference pairs", measure, True, ".3f")
    return None


def _shapes_evaluation(role: str, num_samples: int):
    if role == "vlm_policy":
        dataset = shapes.build_vision_preference_dataset(num_samples, split="test")

        def measure(trainer):
            metrics = trainer.evaluate(eval_dataset=dataset)  # TRL names DPO's own metrics eval_*, whatever the prefix
            return metrics["eval_logps/chosen"] - metrics["eval_logps/rejected"], []

        description = (
            f"log-probability margin of the true colour over a wrong one, mean over {len(dataset)} held-out images "
            "(nats; > 0: the model prefers the truth)"
        )
        return Evaluation(description, measure, calls_trainer_evaluate=True)
    if role == "diffusion":
        dataset = shapes.build_image_preference_dataset(num_samples, split="test")

        def measure(trainer):
            metrics = trainer.evaluate(eval_dataset=dataset)  # fixed noise and timesteps: before and after compare
            gap = metrics["eval_diffusion_dpo/model_mse_rejected"] - metrics["eval_diffusion_dpo/model_mse_chosen"]
            return gap, []

        description = (
            f"denoising error on the dispreferred (cool) image minus on the preferred (warm) one, mean over "
            f"{len(dataset)} held-out pairs (> 0: the model favours the preferred images)"
        )
        return Evaluation(description, measure, True, "+.5f", calls_trainer_evaluate=True)
    return None
