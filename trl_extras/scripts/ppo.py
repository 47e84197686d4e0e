"""PPO (actor-critic RLHF) with trl-extras' ``PPOTrainer``.

```bash
trl-extras ppo --config configs/ppo.yaml
trl-extras ppo --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct --dataset_name trl-lib/DeepMath-103K \
    --reward_funcs accuracy_reward --output_dir Qwen2.5-0.5B-PPO
```

The value model (critic) is ``value_model_name_or_path`` when set; otherwise ``PPOTrainer`` builds it as
``value_model_init`` says (from the first reward model, or from the policy with a new value head).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._common import RLScriptArguments, build_parser, resolve_model_path, reward_funcs_from_args, train_policy


@dataclass
class PPOScriptArguments(RLScriptArguments):
    value_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "The critic: a one-label sequence classifier sharing the policy's tokenizer (local directory, Hub "
            "id or `builtin:sentiment-rm`). Unset: built as `value_model_init` says."
        },
    )


def main(script_args, training_args, model_args, dataset_args):
    from trl_extras import PPOTrainer

    reward_funcs = reward_funcs_from_args(script_args)
    value_model = None
    if script_args.value_model_name_or_path:
        value_model = resolve_model_path(script_args.value_model_name_or_path, "value_model_name_or_path")
    return train_policy(
        PPOTrainer,
        script_args,
        training_args,
        model_args,
        dataset_args,
        subset="prompt",
        reward_funcs=reward_funcs,
        value_model=value_model,
    )


def make_parser(prog: str = "trl-extras ppo"):
    from trl_extras import PPOConfig

    return build_parser(prog, PPOScriptArguments, PPOConfig)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
