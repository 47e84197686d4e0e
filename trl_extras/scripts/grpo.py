"""GRPO with TRL's stock ``GRPOTrainer``.

```bash
trl-extras grpo --config configs/grpo.yaml
trl-extras grpo --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct --dataset_name trl-lib/DeepMath-103K \
    --reward_funcs accuracy_reward --output_dir Qwen2.5-0.5B-GRPO
```
"""

from __future__ import annotations

import trl

from ._common import RLScriptArguments, build_parser, reward_funcs_from_args, train_policy


def main(script_args, training_args, model_args, dataset_args):
    reward_funcs = reward_funcs_from_args(script_args)
    return train_policy(
        trl.GRPOTrainer,
        script_args,
        training_args,
        model_args,
        dataset_args,
        subset="prompt",
        reward_funcs=reward_funcs,
    )


def make_parser(prog: str = "trl-extras grpo"):
    return build_parser(prog, RLScriptArguments, trl.GRPOConfig)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
