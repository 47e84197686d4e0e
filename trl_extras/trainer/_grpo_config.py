"""Shared by the configs built on ``GRPOConfig`` whose baseline is not the group mean (ReMax, PPO)."""

from trl import GRPOConfig

from .. import _trl_compat


def grpo_post_init(config: GRPOConfig) -> None:
    """Run ``GRPOConfig.__post_init__`` on ``config``, allowing ``num_generations == 1``.

    GRPOConfig rejects ``num_generations < 2`` because GRPO's baseline is the mean of each prompt's group. ReMax's
    baseline is the greedy completion and PPO's the value model, so one sample per prompt is valid (and the papers'
    setting); see ``_trl_compat.grpo_post_init_one_generation`` for how the check is passed.
    """
    if config.num_generations > 1:
        GRPOConfig.__post_init__(config)
    else:
        _trl_compat.grpo_post_init_one_generation(config)
