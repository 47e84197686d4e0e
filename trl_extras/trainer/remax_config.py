"""Configuration for :class:`~trl_extras.trainer.remax_trainer.ReMaxTrainer`."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig

from .._distributed import check_process_group
from ..losses.remax import SCALE_REWARDS
from ..validation import check_config
from ._grpo_config import grpo_post_init


@dataclass
class ReMaxConfig(GRPOConfig):
    r"""
    Configuration class for [`ReMaxTrainer`].

    Inherits every parameter of [`~trl.GRPOConfig`] (generation, vLLM, `beta`, `num_iterations`, clipping, logging);
    only the fields below are added or have a different default. Generation length and stop tokens
    (`max_completion_length`, `generation_kwargs`) apply to the sampled and the greedy completions alike.

    Parameters:
        > ReMax

        num_generations (`int`, *optional*, defaults to `1`):
            Sampled completions per prompt. ReMax's baseline is the reward of the prompt's greedy completion, not a
            group mean, so one sample per prompt (the paper's setting) works; with more, all samples of a prompt share
            its greedy baseline.
        scale_rewards (`str`, *optional*, defaults to `"none"`):
            `"none"` (the paper): the advantage is `r(sample) - r(greedy)`. `"batch"`: divided by the standard
            deviation of the sampled rewards over the batch. `"group"`: over each prompt's samples (needs
            `num_generations > 1`).
        loss_type (`str`, *optional*, defaults to `"luspo"`):
            GRPO's loss aggregation. The default sums each completion's token terms and averages over completions,
            which is Algorithm 2's `-(logp.sum(-1) * (r - r_greedy)).mean()`; every other GRPO `loss_type` works too.
        importance_sampling_level (`str`, *optional*, defaults to `"sequence"`):
            Level of the `pi / pi_old` ratio used for clipping when `num_iterations > 1`. On-policy (the paper) the
            ratio is 1 and both levels give Algorithm 2's gradient; `"sequence"` matches ReMax's sequence-level reward
            and is what the `"luspo"` aggregation expects.
    """

    num_generations: int | None = field(
        default=1,
        metadata={
            "help": "Sampled completions per prompt. 1 is the paper's setting; with more, all samples of a prompt "
            "share its greedy baseline."
        },
    )
    scale_rewards: str = field(
        default="none",
        metadata={
            "help": "'none' (the paper): advantage = r(sample) - r(greedy). 'batch': divided by the std of the "
            "sampled rewards over the batch. 'group': over each prompt's samples (needs num_generations > 1)."
        },
    )
    loss_type: str = field(
        default="luspo",
        metadata={
            "help": "GRPO loss aggregation. The default, 'luspo', sums token terms per completion and averages over "
            "completions: Algorithm 2's -(logp.sum(-1) * (r - r_greedy)).mean()."
        },
    )
    importance_sampling_level: str = field(
        default="sequence",
        metadata={
            "help": "Level of the pi/pi_old ratio used for clipping when num_iterations > 1: 'sequence' (default, "
            "matches ReMax's sequence-level reward) or 'token'. Both give Algorithm 2's gradient on-policy."
        },
    )

    def __post_init__(self):
        check_config(self)  # field values no trainer can use (beta < 0, loss_type, lengths, batch sizes)
        if isinstance(self.num_generations, bool) or not isinstance(self.num_generations, int):
            raise ValueError(f"`num_generations` must be a positive integer, got {self.num_generations!r}.")
        if self.num_generations < 1:
            raise ValueError(f"`num_generations` must be at least 1, got {self.num_generations}.")
        self.scale_rewards = {True: "group", False: "none"}.get(self.scale_rewards, self.scale_rewards)
        if self.scale_rewards not in SCALE_REWARDS:
            raise ValueError(f"`scale_rewards` must be one of {SCALE_REWARDS}, got {self.scale_rewards!r}.")
        if self.scale_rewards == "group" and self.num_generations == 1:
            raise ValueError(
                "`scale_rewards='group'` divides by the spread of each prompt's samples, which needs "
                "`num_generations > 1`; use 'none' (the paper) or 'batch'."
            )
        if self.multi_objective_aggregation != "sum_then_normalize":
            raise ValueError(
                "`multi_objective_aggregation` must be 'sum_then_normalize' for ReMax: the advantage is the weighted "
                f"sum of per-function reward differences to the greedy completion, got {self.multi_objective_aggregation!r}."
            )

        grpo_post_init(self)  # GRPOConfig's checks, with one sample per prompt allowed (the greedy baseline's setting)
        check_process_group(self)  # several launched processes must form one group
