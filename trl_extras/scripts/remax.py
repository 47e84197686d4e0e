"""ReMax (REINFORCE with a greedy baseline) with trl-extras' ``ReMaxTrainer``.

```bash
trl-extras remax --config configs/remax.yaml
trl-extras remax --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct --dataset_name trl-lib/DeepMath-103K \
    --reward_funcs accuracy_reward --output_dir Qwen2.5-0.5B-ReMax
```
"""

from __future__ import annotations

from ._common import RLScriptArguments, build_parser, reward_funcs_from_args, train_policy


def main(script_args, training_args, model_args, dataset_args):
    from trl_extras import ReMaxTrainer

    reward_funcs = reward_funcs_from_args(script_args)
    return train_policy(
        ReMaxTrainer, script_args, training_args, model_args, dataset_args, subset="prompt", reward_funcs=reward_funcs
    )


def make_parser(prog: str = "trl-extras remax"):
    from trl_extras import ReMaxConfig

    return build_parser(prog, RLScriptArguments, ReMaxConfig)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
