"""Shared by the configs built on ``GRPOConfig`` whose baseline is not the group mean (ReMax, PPO)."""

from trl import GRPOConfig


class _OneGenerationPerPrompt(int):
    """The integer 1, let through ``GRPOConfig``'s ``num_generations < 2`` check and no other comparison."""

    def __lt__(self, other):
        return False if other == 2 else int(self) < other


def grpo_post_init(config: GRPOConfig) -> None:
    """Run ``GRPOConfig.__post_init__`` on ``config``, allowing ``num_generations == 1``.

    GRPOConfig rejects ``num_generations < 2`` because GRPO's baseline is the mean of each prompt's group. ReMax's
    baseline is the greedy completion and PPO's the value model, so one sample per prompt is valid (and the papers'
    setting): the parent validates everything else with a 1 that passes that single check, then gets a plain int back.
    """
    if config.num_generations > 1:
        GRPOConfig.__post_init__(config)
        return
    config.num_generations = _OneGenerationPerPrompt(1)
    try:
        GRPOConfig.__post_init__(config)
    finally:
        config.num_generations = 1
