"""The typed record that one generation batch carries between GRPO's hooks (ReMax, PPO).

``GRPOTrainer._generate_and_score_completions`` runs, for one generation batch, ``_generate`` and then
``_calculate_rewards``, and forms the advantages inline. ReMax and PPO override those hooks and pass what one hook
learns to the next in a single :class:`Rollout` (trl-extras' counterpart of OpenRLHF's ``Experience``), one per mode
(``"train"`` / ``"eval"``: an evaluation in the middle of a PPO rollout leaves the training record alone)::

    _generate_and_score_completions    begin(): a fresh record (one left by a batch that raised is dropped)
      -> _generate            (ReMax)  sets greedy
      -> _calculate_rewards            consumes greedy (ReMax); sets rewards_per_func, greedy_rewards_per_func
    <- _generate_and_score_completions consumes the rewards; ReMax and PPO-eval end() the record, PPO-train keeps it
       with `batch` for
    -> _prepare_inputs        (PPO)    reads batch at each PPO epoch; _save_rng_state saves it mid-rollout

Reading a field asserts that an earlier hook of the same batch set it: a ``RuntimeError`` names the hook that should
have, so a TRL change that stops calling a hook fails at once instead of reusing the previous batch's rewards.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ._greedy import GreedyCompletions

# The order in which GRPO calls the hooks of one generation batch (for the error message)
HOOK_ORDER = (
    "GRPOTrainer._generate_and_score_completions calls _generate, then _calculate_rewards, then forms the "
    "advantages; PPO's _prepare_inputs then replays the training rollout for each PPO epoch"
)

_ATTRIBUTE = "_trl_extras_rollouts"  # {"train": Rollout, "eval": Rollout} on the trainer


@dataclass
class Rollout:
    """What one generation batch has gathered so far, on this process.

    Shapes: ``B`` rows on this process, ``N = B * num_processes`` rows gathered over processes, ``K`` reward functions
    (``len(trainer.reward_funcs)``), ``G`` completions per prompt (``num_generations``), ``T`` completion length.
    Each field's ``metadata["set_by"]`` names the hook that sets it.

    Attributes:
        greedy (`GreedyCompletions`, ReMax):
            The greedy completions of this process's prompts, ``B // stride`` rows. Set by ``_generate``, consumed by
            ``_calculate_rewards``.
        rewards_per_func (`torch.Tensor` of shape `(N, K)`):
            The samples' raw rewards, gathered over processes, NaN where a reward function returned ``None``. Set by
            ``_calculate_rewards``, consumed by ``_generate_and_score_completions``.
        greedy_rewards_per_func (`torch.Tensor` of shape `(N // G, K)`, ReMax):
            The rewards of each prompt's greedy completion, in prompt order. Set and consumed as ``rewards_per_func``.
        batch (`dict[str, torch.Tensor]`, PPO training):
            GRPO's output for the rollout (``prompt_ids`` `(B, P)`, ``completion_ids`` / ``completion_mask`` /
            ``old_per_token_logps`` `(B, T)`, ...) plus PPO's ``advantages``, ``returns``, ``values`` and ``ppo_mask``
            `(B, T)`. Set by ``_generate_and_score_completions``; read by ``_prepare_inputs`` to reshuffle the rollout
            at each PPO epoch and saved by ``_save_rng_state`` (``state_dict``) in a checkpoint taken mid-rollout.
    """

    greedy: GreedyCompletions | None = field(default=None, metadata={"set_by": "ReMaxTrainer._generate"})
    rewards_per_func: torch.Tensor | None = field(default=None, metadata={"set_by": "_calculate_rewards"})
    greedy_rewards_per_func: torch.Tensor | None = field(
        default=None, metadata={"set_by": "ReMaxTrainer._calculate_rewards"}
    )
    batch: dict[str, torch.Tensor] | None = field(
        default=None, metadata={"set_by": "PPOTrainer._generate_and_score_completions (training)"}
    )

    def require(self, *names: str, reader: str) -> Any:
        """The fields ``names`` (one value, or a tuple for several), each asserted set by an earlier hook."""
        for name in names:
            if getattr(self, name) is None:
                raise _missing(name, reader)
        values = tuple(getattr(self, name) for name in names)
        return values[0] if len(values) == 1 else values

    def consume(self, *names: str, reader: str) -> Any:
        """As ``require``, and clears the fields: each value is read by one hook, once."""
        values = self.require(*names, reader=reader)
        for name in names:
            setattr(self, name, None)
        return values

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What a resume mid-rollout needs, as ``torch.load(weights_only=True)`` reads it: the tensors of ``batch``.

        The other fields live inside one ``_generate_and_score_completions`` call, and a checkpoint is never taken
        there. The layout is the one ``ppo_rollout_<rank>.pt`` always had (``"rollout"``: GRPO's batch dict)."""
        batch = self.require("batch", reader="Rollout.state_dict")
        return dict(batch)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> Rollout:
        return cls(batch=dict(state))


def _missing(name: str, reader: str) -> RuntimeError:
    setter = next(f.metadata["set_by"] for f in fields(Rollout) if f.name == name)
    return RuntimeError(
        f"{reader} needs the rollout record's `{name}`, which `{setter}` sets earlier in the same generation batch, "
        f"but it is missing: `{setter}` did not run before `{reader}` for this batch. Expected order: {HOOK_ORDER}. "
        "A TRL version that no longer calls that hook there (see `trl_extras._trl_compat.OVERRIDDEN_HOOKS` and "
        "tests/test_trl_surface.py), or a direct call of the reading hook on its own, leads here."
    )


def _mode(trainer) -> str:
    return "train" if trainer.model.training else "eval"


def _records(trainer) -> dict[str, Rollout]:
    return vars(trainer).setdefault(_ATTRIBUTE, {})


def begin(trainer) -> Rollout:
    """A fresh record for the generation batch starting now (``_generate_and_score_completions``, before the
    parent's): a record left by a batch that raised half-way, or the previous PPO rollout, is dropped."""
    record = _records(trainer)[_mode(trainer)] = Rollout()
    return record


def record(trainer) -> Rollout:
    """This mode's record, for a hook to write to (created if none is open, e.g. ``_generate`` called on its own)."""
    return _records(trainer).setdefault(_mode(trainer), Rollout())


def get(trainer, reader: str, mode: str | None = None) -> Rollout:
    """The record of ``mode`` (default: the trainer's current mode), asserted present."""
    mode = mode or _mode(trainer)
    if mode not in _records(trainer):
        raise RuntimeError(
            f"{reader} found no rollout record for {mode}: no generation batch was started "
            f"(`_generate_and_score_completions` begins one). Expected order: {HOOK_ORDER}."
        )
    return _records(trainer)[mode]


def require(trainer, *names: str, reader: str, mode: str | None = None) -> Any:
    """``get(trainer, reader, mode).require(*names, reader=reader)``: fields of the record, asserted set."""
    return get(trainer, reader, mode).require(*names, reader=reader)


def end(trainer, reader: str) -> Rollout:
    """The record of the batch ending now, asserted present, and removed from the trainer."""
    record = get(trainer, reader)
    del _records(trainer)[_mode(trainer)]
    return record


def peek(trainer, mode: str) -> Rollout | None:
    """The record of ``mode`` if there is one (for checkpoints, which run outside the hooks)."""
    return _records(trainer).get(mode)


def put(trainer, mode: str, rollout: Rollout) -> None:
    """Install ``rollout`` as the record of ``mode`` (a checkpoint's PPO rollout, on resume)."""
    _records(trainer)[mode] = rollout
