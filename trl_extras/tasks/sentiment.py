"""The built-in offline task: controlled-sentiment movie reviews with a programmatic ground-truth reward.

A stand-in for the IMDb controlled-sentiment task of the DPO paper (Rafailov et al. 2023,
https://arxiv.org/abs/2305.18290, section 6.1): the policy continues the opening of a movie review and should write a
*positive* continuation. Where the paper scores text with a sentiment classifier, we use a lexicon, so the reward is
exact, deterministic and costs nothing:

    r(y) = (#positive words in y - #negative words in y) / max(#words in y, 10)        in [-1, 1]

Words are lower-cased runs of letters and apostrophes; the lexicons are in ``data/sentiment.json``. The floor of 10
words in the denominator stops "great." from scoring like a whole glowing review. Negation is not handled
("not good" counts as positive); this is a toy task whose point is a reward everyone can compute by hand.

Everything here is seeded and deterministic:

- ``build_sft_dataset``: reviews (prompt + completion) of every sentiment, positive to negative.
- ``build_preference_dataset``: two continuations of one prompt; ``chosen`` has the higher ground-truth reward.
- ``build_prompt_dataset``: review openings only, for online trainers (GRPO, RLOO, ReMax, PPO).
- ``default_policy_path``: a tiny Llama policy SFT-trained on the reviews, built on first use and cached.
- ``default_reward_model_path``: a tiny reward model trained on the preference pairs, built on first use and cached.

```python
from trl import GRPOConfig, GRPOTrainer
from trl_extras.tasks import sentiment

trainer = GRPOTrainer(
    model=sentiment.default_policy_path(),
    reward_funcs=sentiment.ground_truth_reward,
    args=GRPOConfig(output_dir="out", bf16=False, report_to="none"),
    train_dataset=sentiment.build_prompt_dataset(),
)
```
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import random
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from ._cache import cached_build, content_hash, source_hash

__all__ = [
    "base_policy_path",
    "build_preference_dataset",
    "build_prompt_dataset",
    "build_sft_dataset",
    "default_policy_path",
    "build_task_tokenizer",
    "default_reward_model_path",
    "eval_prompts",
    "ground_truth_reward",
    "sample_review",
    "sentiment_score",
    "task_data",
]

_MIN_WORDS = 10
_WORD = re.compile(r"[a-z']+")

#: Size of the built-in policy: a little wider than the testing kit's default so it writes word-like text.
POLICY_CONFIG = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2}


@functools.cache
def task_data() -> dict[str, Any]:
    """The bundled task data: lexicons, phrase lists and the train/eval review openings."""
    text = resources.files("trl_extras.tasks").joinpath("data", "sentiment.json").read_text()
    return json.loads(text)


@functools.cache
def _lexicons() -> tuple[frozenset[str], frozenset[str]]:
    data = task_data()
    return frozenset(data["positive_words"]), frozenset(data["negative_words"])


def sentiment_score(text: str) -> float:
    """Ground-truth reward of one text: (#positive - #negative words) / max(#words, 10), in [-1, 1]."""
    positive, negative = _lexicons()
    words = _WORD.findall(text.lower())
    score = sum(word in positive for word in words) - sum(word in negative for word in words)
    return score / max(len(words), _MIN_WORDS)


def _completion_text(completion) -> str:
    # standard format: a string; conversational: a list of messages, of which we score the assistant turns
    if isinstance(completion, str):
        return completion
    parts = []
    for message in completion:
        content = message.get("content", "")
        if isinstance(content, list):  # multimodal content parts
            content = " ".join(part.get("text", "") for part in content if part.get("type") == "text")
        parts.append(content)
    return " ".join(parts)


def ground_truth_reward(completions: Sequence, **kwargs) -> list[float]:
    """TRL reward function (``reward_funcs=ground_truth_reward``): ``sentiment_score`` of each completion.

    Accepts standard (strings) and conversational (lists of messages) completions; other keyword arguments that
    TRL passes (prompts, completion_ids, dataset columns) are ignored.
    """
    return [sentiment_score(_completion_text(completion)) for completion in completions]


def eval_prompts() -> list[str]:
    """The held-out review openings used to measure a policy before and after training."""
    return list(task_data()["eval_prompts"])


def _clause(rng: random.Random, sentiment: str) -> str:
    data = task_data()
    if sentiment == "neutral" or rng.random() < 0.3:
        return rng.choice(data[f"{sentiment}_phrases"])
    adjective = rng.choice(data[f"{sentiment}_adjectives"])
    return f"{rng.choice(data['subjects'])} {rng.choice(data['verbs'])} {adjective}"


def sample_review(rng: random.Random, p_positive: float) -> str:
    """One review continuation: two sentences of three clauses, each positive with probability ``p_positive``.

    About one clause in five is neutral. The text starts with a space, so ``prompt + completion`` reads naturally.
    """
    sentiments = []
    for _ in range(3):
        if rng.random() < 0.2:
            sentiments.append("neutral")
        else:
            sentiments.append("positive" if rng.random() < p_positive else "negative")
    clauses = [_clause(rng, sentiment) for sentiment in sentiments]
    joiner = rng.choice([" and ", ", but ", ", and ", ", while "])
    first = clauses[0] + joiner + clauses[1]
    return f" {first[0].upper()}{first[1:]}. {clauses[2][0].upper()}{clauses[2][1:]}."


_SENTIMENT_MIX = (0.0, 0.25, 0.5, 0.75, 1.0)


def _sft_rows(num_rows: int, seed: int, split: str) -> list[dict[str, str]]:
    rng = random.Random(f"sft-{seed}")
    prompts = task_data()["train_prompts" if split == "train" else "eval_prompts"]
    rows = []
    for i in range(num_rows):
        p_positive = _SENTIMENT_MIX[i % len(_SENTIMENT_MIX)]
        rows.append({"prompt": prompts[i % len(prompts)], "completion": sample_review(rng, p_positive)})
    return rows


def build_sft_dataset(num_rows: int = 960, seed: int = 0, split: str = "train"):
    """Reviews of every sentiment, as a prompt-completion ``datasets.Dataset`` (columns ``prompt``, ``completion``).

    The mix of sentiments is balanced, so a policy trained on it writes positive and negative reviews about equally
    often: the starting point the sentiment-control task needs.
    """
    from datasets import Dataset

    return Dataset.from_list(_sft_rows(num_rows, seed, split))


def _preference_rows(num_rows: int, seed: int, split: str) -> list[dict[str, str]]:
    rng = random.Random(f"preference-{seed}")
    prompts = task_data()["train_prompts" if split == "train" else "eval_prompts"]
    rows = []
    while len(rows) < num_rows:
        prompt = prompts[len(rows) % len(prompts)]
        a = sample_review(rng, rng.choice(_SENTIMENT_MIX))
        b = sample_review(rng, rng.choice(_SENTIMENT_MIX))
        score_a, score_b = sentiment_score(a), sentiment_score(b)
        if score_a == score_b:  # no ground-truth preference: draw again
            continue
        chosen, rejected = (a, b) if score_a > score_b else (b, a)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


def build_preference_dataset(num_rows: int = 256, seed: int = 0, split: str = "train"):
    """Pairs of continuations of one opening, labelled by the ground truth: ``chosen`` scores strictly higher.

    Columns ``prompt``, ``chosen``, ``rejected`` (TRL's standard preference format). Ties are redrawn, never kept.
    """
    from datasets import Dataset

    return Dataset.from_list(_preference_rows(num_rows, seed, split))


def build_prompt_dataset(split: str = "train"):
    """Review openings only (column ``prompt``), for online trainers; ``split="test"`` gives the held-out openings."""
    from datasets import Dataset

    key = "train_prompts" if split == "train" else "eval_prompts"
    return Dataset.from_dict({"prompt": list(task_data()[key])})


# ---------------------------------------------------------------------------------------------------------------------
# cached tiny models


def _policy_recipe() -> dict[str, Any]:
    return {"code": _code_hash(), "config": POLICY_CONFIG, "steps": 400, "lr": 3e-3, "batch": 32, "rows": 960}


def _code_hash() -> str:
    # the cached models depend on this module (data generation, training loops) and on the testing kit's model config
    from trl_extras.testing import _lm

    return content_hash(source_hash(sentiment_score), source_hash(_lm._llama_config))


def default_policy_path() -> str:
    """A tiny causal LM SFT-trained on ``build_sft_dataset``, built on first use (~10-30 s on a CPU) and cached.

    The cache key hashes the task data and the training recipe; see ``trl_extras.tasks._cache`` for where entries
    live (``$TRL_EXTRAS_CACHE``) and how concurrent builds are serialised.
    """
    recipe = _policy_recipe()
    key = content_hash(task_data(), recipe)
    return cached_build("sentiment-sft", key, lambda directory: _train_policy(directory, recipe))


def _reward_recipe() -> dict[str, Any]:
    return {"code": _code_hash(), "steps": 150, "lr": 3e-3, "batch": 32, "rows": 512}


def default_reward_model_path() -> str:
    """A tiny reward model (one-label sequence classifier) trained on the ground-truth preference pairs; cached.

    It starts from the default policy's weights (the usual recipe: a reward model initialised from the SFT model).
    """
    policy = default_policy_path()
    recipe = _reward_recipe()
    key = content_hash(task_data(), recipe, Path(policy).name)
    return cached_build("sentiment-rm", key, lambda directory: _train_reward_model(directory, policy, recipe))


def _batches(num_rows: int, batch_size: int, steps: int, seed: int):
    import torch

    generator = torch.Generator().manual_seed(seed)
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        if len(order) < batch_size:
            order = torch.cat([order, torch.randperm(num_rows, generator=generator)])
        yield order[:batch_size].tolist()
        order = order[batch_size:]


@contextlib.contextmanager
def _one_thread():
    # Models this small gain nothing from intra-op threads, and on a busy machine extra threads only wait for cores.
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _cosine(step: int, steps: int, warmup: int = 20) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def build_task_tokenizer(directory: str | Path | None = None, vocab_size: int = 1024):
    """The testing kit's tokenizer recipe (byte-level BPE, pad/eos, ChatML template), trained on the task's reviews.

    Trained on this task's text, most words are one token, so a whole review fits in ~25 tokens and the tiny policy
    learns and samples much faster than with the kit's generic 320-token vocabulary.
    """
    from trl_extras.testing import build_tiny_tokenizer

    data = task_data()
    corpus = [row["prompt"] + row["completion"] for row in _sft_rows(960, seed=0, split="train")]
    corpus += data["eval_prompts"] + data["positive_words"] + data["negative_words"]
    return build_tiny_tokenizer(directory, vocab_size=vocab_size, corpus=corpus)


def base_policy_path() -> str:
    """The untrained tiny policy (random weights, the task tokenizer): the starting point for SFT on the reviews."""
    recipe = {"code": _code_hash(), "config": POLICY_CONFIG}
    key = content_hash(task_data(), recipe)
    return cached_build("sentiment-base", key, lambda directory: _save(*_fresh_policy(recipe["config"]), directory))


def _fresh_policy(config: dict[str, Any]):
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    from trl_extras.testing._lm import _llama_config

    tokenizer = build_task_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(_llama_config(tokenizer, **config))
    model.generation_config = GenerationConfig(
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id
    )
    return model, tokenizer


def _save(model, tokenizer, directory: Path) -> None:
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def _train_policy(directory: Path, recipe: dict[str, Any]) -> None:
    with _one_thread():
        _sft_train(directory, recipe)


def _sft_train(directory: Path, recipe: dict[str, Any]) -> None:
    import torch

    model, tokenizer = _fresh_policy(recipe["config"])
    rows = _sft_rows(recipe["rows"], seed=0, split="train")
    texts = [row["prompt"] + row["completion"] + tokenizer.eos_token for row in rows]
    encoded = tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
    labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)

    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _cosine(step, recipe["steps"]))
    model.train()
    for index in _batches(len(rows), recipe["batch"], recipe["steps"], seed=0):
        loss = model(
            input_ids=encoded["input_ids"][index],
            attention_mask=encoded["attention_mask"][index],
            labels=labels[index],
        ).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    _save(model, tokenizer, directory)


def _train_reward_model(directory: Path, policy_path: str, recipe: dict[str, Any]) -> None:
    with _one_thread():
        _bradley_terry_train(directory, policy_path, recipe)


def _bradley_terry_train(directory: Path, policy_path: str, recipe: dict[str, Any]) -> None:
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(policy_path)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(policy_path, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    rows = _preference_rows(recipe["rows"], seed=1, split="train")

    def encode(column):
        texts = [row["prompt"] + row[column] + tokenizer.eos_token for row in rows]
        return tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)

    chosen, rejected = encode("chosen"), encode("rejected")
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _cosine(step, recipe["steps"]))
    model.train()
    for index in _batches(len(rows), recipe["batch"], recipe["steps"], seed=1):
        r_chosen = model(input_ids=chosen["input_ids"][index], attention_mask=chosen["attention_mask"][index]).logits
        r_rejected = model(
            input_ids=rejected["input_ids"][index], attention_mask=rejected["attention_mask"][index]
        ).logits
        loss = -F.logsigmoid(r_chosen - r_rejected).mean()  # Bradley-Terry
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
