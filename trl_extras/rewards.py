"""Turn the reward names of a config into what GRPO-style trainers take as ``reward_funcs``.

Each entry of ``reward_funcs`` in a config (or on the command line) is one of:

- a TRL built-in reward function, by name: ``accuracy_reward``, ``reasoning_accuracy_reward``,
  ``think_format_reward``, ``get_soft_overlong_punishment`` (with the same settings as ``trl grpo``:
  ``max_completion_len=1280, soft_punish_cache=256``), ``get_repetition_penalty_reward`` (its defaults);
- a built-in task's ground-truth reward: ``builtin:sentiment``;
- an import path to your own function, ``package.module:function`` (or TRL's dotted ``package.module.function``);
  the current directory is importable, so ``my_rewards:length_penalty`` finds ``./my_rewards.py``;
- a reward model: a local directory saved with ``save_pretrained``, a Hub id (``org/name``) or
  ``builtin:sentiment-rm``; TRL loads it as a one-label ``AutoModelForSequenceClassification``.

```python
from trl_extras.rewards import resolve_reward_funcs

reward_funcs = resolve_reward_funcs(["builtin:sentiment", "my_rewards:length_penalty"])
```

Every reward function a trainer of ours (and the CLI's stock GRPO/RLOO) calls goes through `check_reward_funcs`: a
reward that is not a finite number is an error naming the function, the row and the value, instead of a loss of 0, a
logged `reward=inf` or NaN parameters. `None` stays allowed (TRL's convention for a row a function does not apply
to: it becomes NaN and is left out of the weighted sum; a row that every function skips gets a reward of 0 and
TRL's warning).
"""

from __future__ import annotations

import difflib
import functools
import importlib
import math
import numbers
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "CheckedRewardFunc",
    "RewardFunctionError",
    "check_finite_rewards",
    "check_reward_funcs",
    "resolve_reward_func",
    "resolve_reward_funcs",
    "trl_reward_functions",
]


class RewardFunctionError(ValueError):
    """A reward function that cannot be loaded, raised, or returned something that is not a reward; the message
    names the function (or the ``reward_funcs`` entry), the row and the value."""


# ---------------------------------------------------------------------------------------------------------------------
# checking what reward functions return


def _callable_name(func: Callable) -> str:
    while isinstance(func, functools.partial):
        func = func.func
    return getattr(func, "__name__", type(func).__name__)


def _snippet(value: Any, limit: int = 60) -> str:
    if isinstance(value, list) and value and isinstance(value[-1], dict):  # a conversation: its last turn
        value = value[-1].get("content")
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bad_reward(value: Any) -> str | None:
    """Why ``value`` is not a reward (``None`` if it is one: a finite real number, or ``None``)."""
    if value is None:
        return None
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # a 0-d tensor or a numpy scalar
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return f"{_snippet(value)} ({type(value).__name__}), not a number"
    if not math.isfinite(value):
        return f"{value!r}, not a finite number"
    return None


class CheckedRewardFunc:
    """A reward function whose every call is checked: it must return one finite number (or ``None``) per
    completion. Anything else, and any exception it raises, becomes a ``RewardFunctionError`` naming the function,
    the row (its index in the batch and the start of its prompt) and the value. ``functools.update_wrapper`` keeps
    the function's ``__name__``, so GRPO's ``reward_func_names`` and metric names are unchanged."""

    def __init__(self, func: Callable):
        functools.update_wrapper(self, func)
        self.func = func
        self.name = _callable_name(func)

    def __call__(self, prompts=None, completions=None, **kwargs):
        try:
            rewards = self.func(prompts=prompts, completions=completions, **kwargs)
        except RewardFunctionError:
            raise
        except Exception as error:
            raise RewardFunctionError(
                f"reward function {self.name!r} raised {type(error).__name__}: {error}"
            ) from error
        return self.check(rewards, prompts)

    def check(self, rewards: Any, prompts: Sequence | None) -> list:
        expected = len(prompts) if prompts is not None else None
        if hasattr(rewards, "tolist") and not isinstance(rewards, list):  # a tensor or an array
            rewards = rewards.tolist()
        if not isinstance(rewards, (list, tuple)):
            raise RewardFunctionError(
                f"reward function {self.name!r} returned {_snippet(rewards)} ({type(rewards).__name__}); expected a "
                f"list of {expected if expected is not None else 'one'} reward(s), one float (or None) per completion"
            )
        if expected is not None and len(rewards) != expected:
            raise RewardFunctionError(
                f"reward function {self.name!r} returned {len(rewards)} rewards for {expected} completions; expected "
                "one float (or None) per completion"
            )
        for row, value in enumerate(rewards):
            problem = _bad_reward(value)
            if problem is not None:
                prompt = f" (prompt {_snippet(prompts[row])})" if prompts is not None else ""
                raise RewardFunctionError(
                    f"reward function {self.name!r} returned {problem} for row {row} of the batch{prompt}; expected a "
                    "finite float, or None for a row the function does not apply to"
                )
        return list(rewards)

    def __reduce__(self):  # picklable whenever the wrapped function is
        return type(self), (self.func,)


class _CheckedAsyncRewardFunc(CheckedRewardFunc):
    async def __call__(self, prompts=None, completions=None, **kwargs):
        try:
            rewards = await self.func(prompts=prompts, completions=completions, **kwargs)
        except RewardFunctionError:
            raise
        except Exception as error:
            raise RewardFunctionError(
                f"reward function {self.name!r} raised {type(error).__name__}: {error}"
            ) from error
        return self.check(rewards, prompts)


def _is_async(func: Callable) -> bool:
    import inspect

    while isinstance(func, functools.partial):
        func = func.func
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(type(func).__call__)


def check_reward_funcs(reward_funcs: Any, field: str = "reward_funcs") -> Any:
    """``reward_funcs`` as GRPO-style trainers take it (one entry or a list), with every Python function wrapped in
    `CheckedRewardFunc`; model paths and models are returned as they are (TRL loads and runs them). Entries of any
    other type are a ``RewardFunctionError`` naming the entry. Idempotent."""
    if reward_funcs is None:
        return None
    entries = reward_funcs if isinstance(reward_funcs, list) else [reward_funcs]
    checked = []
    for index, func in enumerate(entries):
        checked.append(_checked(func, f"{field}[{index}]" if isinstance(reward_funcs, list) else field))
    return checked if isinstance(reward_funcs, list) else checked[0]


def check_finite_rewards(
    rewards_per_func: Any,
    reward_funcs: Sequence[Any],
    reward_func_names: Sequence[str],
    prompts: Sequence[Any],
    completions: Sequence[Any],
    num_processes: int = 1,
    process_index: int = 0,
    trainer_name: str = "PPO",
) -> None:
    """Stop before a non-finite score reaches a value-based update (GAE would turn every parameter into NaN).

    ``rewards_per_func`` is ``(N, K)``, gathered over the ``num_processes`` processes (each holding ``len(prompts)``
    rows), so every process sees the same rows and raises together; the process that holds the bad row adds its
    prompt and completion to the message. NaN is TRL's ``None`` (no reward for this row) from a reward function and
    passes; a reward model (an ``nn.Module`` in ``reward_funcs``) has no such convention, so NaN from it is an error,
    as is ``inf`` from either. Raises ``RewardFunctionError`` naming the function, the row and the value.
    """
    import torch
    import torch.nn as nn

    is_model = torch.tensor([isinstance(f, nn.Module) for f in reward_funcs], device=rewards_per_func.device)
    bad = torch.isinf(rewards_per_func) | (torch.isnan(rewards_per_func) & is_model.unsqueeze(0))  # (N, K)
    if not bad.any():
        return
    row, k = (int(i) for i in bad.nonzero()[0])
    kind = "reward model" if isinstance(reward_funcs[k], nn.Module) else "reward function"
    process, local_row = divmod(row, len(prompts))
    where = f"row {local_row} of process {process}'s batch" if num_processes > 1 else f"row {row}"
    if process == process_index:
        where += f" (prompt {prompts[local_row]!r}, completion {completions[local_row]!r})"
    raise RewardFunctionError(
        f"The {kind} `{reward_func_names[k]}` returned {rewards_per_func[row, k].item()} for {where} "
        f"({int(bad[:, k].sum())} of {bad.size(0)} rows are non-finite). {trainer_name} needs a finite score for "
        "every completion: a non-finite one makes the advantages and then every parameter NaN. Return a finite "
        "number (or None, from a reward function, to leave the row out of training)."
    )


def _checked(func: Any, where: str) -> Any:
    import torch.nn as nn

    if isinstance(func, (str, nn.Module, CheckedRewardFunc)):
        return func
    if not callable(func):
        raise RewardFunctionError(
            f"{where}: expected a reward function, a reward model or a model path, got {_snippet(func)} "
            f"({type(func).__name__})"
        )
    return _CheckedAsyncRewardFunc(func) if _is_async(func) else CheckedRewardFunc(func)


def trl_reward_functions() -> dict[str, Callable]:
    """TRL's built-in reward functions by the names ``trl grpo`` and ``trl rloo`` accept (factories called)."""
    from trl.rewards import (
        accuracy_reward,
        get_repetition_penalty_reward,
        get_soft_overlong_punishment,
        reasoning_accuracy_reward,
        think_format_reward,
    )

    return {
        "accuracy_reward": accuracy_reward,
        "reasoning_accuracy_reward": reasoning_accuracy_reward,
        "think_format_reward": think_format_reward,
        "get_soft_overlong_punishment": get_soft_overlong_punishment(max_completion_len=1280, soft_punish_cache=256),
        "get_repetition_penalty_reward": get_repetition_penalty_reward(),
    }


_TRL_NAMES = (
    "accuracy_reward",
    "reasoning_accuracy_reward",
    "think_format_reward",
    "get_soft_overlong_punishment",
    "get_repetition_penalty_reward",
)


def _import_function(spec: str, module_name: str, attribute: str, field: str) -> Callable:
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise RewardFunctionError(f"{field}: cannot import {spec!r}: {error}") from error
    try:
        function = getattr(module, attribute)
    except AttributeError:
        raise RewardFunctionError(
            f"{field}: cannot import {spec!r}: module {module_name!r} has no attribute {attribute!r}"
        ) from None
    if not callable(function):
        raise RewardFunctionError(f"{field}: {spec!r} is a {type(function).__name__}, not a function")
    return function


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~"))


def resolve_reward_func(name: str, field: str = "reward_funcs") -> Callable | str:
    """One ``reward_funcs`` entry -> a callable, or a model path / Hub id string (which TRL loads itself).

    Raises ``RewardFunctionError`` naming ``field`` when the entry cannot be resolved or imported.
    """
    from trl_extras.tasks import registry

    if registry.is_builtin(name):
        if name in registry.builtin_names("reward"):
            return registry.resolve_builtin_reward(name)
        if name in registry.builtin_names("model"):
            return registry.resolve_builtin_model(name)
        known = registry.builtin_names("reward") + registry.builtin_names("model")
        raise RewardFunctionError(f"{field}: unknown built-in reward {name!r}; expected one of {', '.join(known)}")
    if name in _TRL_NAMES:
        return trl_reward_functions()[name]
    if ":" in name:
        module_name, _, attribute = name.partition(":")
        return _import_function(name, module_name, attribute, field)
    if os.path.isdir(os.path.expanduser(name)):
        return os.path.expanduser(name)
    if _looks_like_hub_id(name):
        return name
    if "." in name and not name.startswith((".", "/")):
        module_name, _, attribute = name.rpartition(".")
        return _import_function(name, module_name, attribute, field)
    if "/" in name or name.startswith((".", "~")):
        raise RewardFunctionError(f"{field}: reward model directory {name!r} does not exist")
    close = difflib.get_close_matches(name, list(_TRL_NAMES) + registry.builtin_names("reward"), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise RewardFunctionError(
        f"{field}: unknown reward function {name!r}. Expected a TRL reward name ({', '.join(_TRL_NAMES)}), "
        f"builtin:sentiment, an import path 'module:function', or a reward model path.{hint}"
    )


def resolve_reward_funcs(names: Sequence[str] | None, field: str = "reward_funcs") -> list[Callable | str]:
    """Resolve every entry of a config's ``reward_funcs`` (see the module docstring for the accepted forms)."""
    return [resolve_reward_func(name, f"{field}[{index}]") for index, name in enumerate(names or [])]
