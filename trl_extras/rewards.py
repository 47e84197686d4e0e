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
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from collections.abc import Callable, Sequence

__all__ = ["RewardFunctionError", "resolve_reward_func", "resolve_reward_funcs", "trl_reward_functions"]


class RewardFunctionError(ValueError):
    """A ``reward_funcs`` entry that names nothing we can load; the message says which entry and why."""


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
