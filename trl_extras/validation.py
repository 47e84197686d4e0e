"""Checks of training config values that no trainer can train with, run before anything is loaded.

TRL's and transformers' configs accept many values that fail only later, deep inside a trainer (``loss_type: [foo]``
after the model has loaded, ``max_completion_length: 0`` as a ``max_new_tokens`` error from ``generate``), or never
fail at all (``beta: -1``, ``per_device_train_batch_size: 0``, ``learning_rate: -1``). `check_config` turns each into
a ``ValueError`` that names the field, what it must be and what it got. It runs in the ``__post_init__`` of every
trl-extras config and, for the stock configs, in the ``trl-extras`` parser before the config object is built.

```python
from trl_extras.validation import check_config

check_config(dpo_config)  # ValueError: `beta` must be a finite number > 0, got -1.0.
```

The rules are one table (`RULES`): a field, the config classes it applies to, and a test of its value.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["DPO_LOSS_TYPES", "GRPO_LOSS_TYPES", "RULES", "SFT_LOSS_TYPES", "check_config"]

# The values TRL's trainers accept (TRL 1.16). DPOTrainer raises on any other loss type only in its first loss
# computation, after the models have loaded; GRPOTrainer silently falls through to its last branch.
DPO_LOSS_TYPES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
    "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)  # fmt: skip
GRPO_LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")
SFT_LOSS_TYPES = ("nll", "dft", "chunked_nll")  # chunked_nll: deprecated alias of nll
TRUNCATION_MODES = ("keep_start", "keep_end")
SCALE_REWARDS = ("group", "batch", "none", True, False)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def positive_int(value: Any) -> str | None:
    return None if _is_int(value) and value >= 1 else "a positive integer"


def optional_positive_int(value: Any) -> str | None:
    return None if value is None or (_is_int(value) and value >= 1) else "a positive integer or None (no limit)"


def non_negative(value: Any) -> str | None:
    return None if _is_real(value) and value >= 0 else "a finite number >= 0"


def positive(value: Any) -> str | None:
    return None if _is_real(value) and value > 0 else "a finite number > 0"


def optional_non_negative(value: Any) -> str | None:
    return None if value is None or (_is_real(value) and value >= 0) else "a finite number >= 0 or None"


def probability(value: Any) -> str | None:
    return None if _is_real(value) and 0 < value <= 1 else "a number in (0, 1]"


def max_steps(value: Any) -> str | None:
    return (
        None if _is_int(value) and (value > 0 or value == -1) else "a positive integer, or -1 to use num_train_epochs"
    )


def seed(value: Any) -> str | None:
    return None if _is_int(value) and 0 <= value < 2**32 else "an integer in [0, 2**32)"


def one_of(allowed: tuple) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in allowed else f"one of {', '.join(map(repr, allowed))}"

    return check


def each_of(allowed: tuple) -> Callable[[Any], str | None]:
    """A value or a list of values (DPO's `loss_type`), each one of `allowed`."""

    def check(value: Any) -> str | None:
        values = value if isinstance(value, (list, tuple)) else [value]
        if values and all(isinstance(item, str) and item in allowed for item in values):
            return None
        return f"one or more of {', '.join(map(repr, allowed))}"

    return check


def finite_list(value: Any) -> str | None:
    if value is None or (isinstance(value, (list, tuple)) and all(_is_real(item) for item in value)):
        return None
    return "a list of finite numbers or None"


@dataclass(frozen=True)
class Rule:
    """`field` of configs of class `applies_to` (names of classes in the config's MRO) must pass `check`, which
    returns what was expected when the value fails. `unless` names the config classes the rule skips."""

    field: str
    applies_to: tuple[str, ...]
    check: Callable[[Any], str | None]
    unless: tuple[str, ...] = ()
    note: str = ""


_ANY = ("TrainingArguments",)
_DPO = ("DPOConfig",)
_ONLINE = ("GRPOConfig", "RLOOConfig")

RULES: tuple[Rule, ...] = (
    # every trainer
    Rule("per_device_train_batch_size", _ANY, positive_int),
    Rule("per_device_eval_batch_size", _ANY, positive_int),
    Rule("gradient_accumulation_steps", _ANY, positive_int),
    Rule("learning_rate", _ANY, non_negative),
    Rule("weight_decay", _ANY, non_negative),
    Rule("max_grad_norm", _ANY, optional_non_negative, note="0 or None turns clipping off"),
    Rule("num_train_epochs", _ANY, positive),
    Rule("max_steps", _ANY, max_steps),
    Rule("seed", _ANY, seed),
    # preference trainers (DPO and its subclasses)
    Rule("beta", _DPO, positive, unless=("UnlikelihoodConfig",), note="DPO's losses divide by or scale with it"),
    Rule("loss_type", _DPO, each_of(DPO_LOSS_TYPES), unless=("UnlikelihoodConfig",)),
    Rule("loss_weights", _DPO, finite_list),
    Rule("max_length", ("DPOConfig", "SFTConfig", "RewardConfig"), optional_positive_int),
    Rule("truncation_mode", ("DPOConfig", "SFTConfig"), one_of(TRUNCATION_MODES)),
    Rule("loss_type", ("SFTConfig",), one_of(SFT_LOSS_TYPES)),
    # online trainers (GRPO, RLOO, ReMax, PPO)
    Rule("beta", _ONLINE, non_negative, unless=("PPOConfig",), note="0 turns the KL term off"),
    Rule("kl_coef", ("PPOConfig",), non_negative),
    Rule("loss_type", ("GRPOConfig",), one_of(GRPO_LOSS_TYPES), unless=("PPOConfig",)),
    Rule("scale_rewards", ("GRPOConfig",), one_of(SCALE_REWARDS), unless=("ReMaxConfig", "PPOConfig")),
    Rule("max_completion_length", _ONLINE, positive_int),
    Rule("num_generations", _ONLINE, positive_int),
    Rule("num_iterations", _ONLINE, positive_int, unless=("PPOConfig",)),
    Rule("temperature", _ONLINE, positive, note="use a small temperature, not 0, for near-greedy sampling"),
    Rule("top_p", _ONLINE, probability),
    Rule("epsilon", ("GRPOConfig",), non_negative),
)


def _class_names(config_class: type) -> set[str]:
    return {klass.__name__ for klass in config_class.__mro__}


def check_config(config: Any, config_class: type | None = None) -> None:
    """Raise ``ValueError("`field` must be <expected>, got <value>.")`` for the first value of `config` that breaks
    a rule of `RULES`.

    `config` is a config object, or any object with the fields as attributes (the ``trl-extras`` parser passes its
    namespace before the config is built); `config_class` says which rules apply (default: ``type(config)``).
    Fields the object does not have are skipped, and so, before the config is built, are fields left at a `None`
    default that the config's ``__post_init__`` resolves (PPOConfig's `temperature`, say); it checks them again then.
    """
    names = _class_names(config_class or type(config))
    unset_defaults = set()
    if config_class is not None and dataclasses.is_dataclass(config_class):
        unset_defaults = {f.name for f in dataclasses.fields(config_class) if f.default is None}
    for rule in RULES:
        if not names & set(rule.applies_to) or names & set(rule.unless) or not hasattr(config, rule.field):
            continue
        value = getattr(config, rule.field)
        if value is None and rule.field in unset_defaults:
            continue
        expected = rule.check(value)
        if expected is not None:
            note = f" ({rule.note})" if rule.note else ""
            raise ValueError(f"`{rule.field}` must be {expected}{note}, got {value!r}.")
