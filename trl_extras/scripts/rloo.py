"""RLOO (REINFORCE leave-one-out) with TRL's stock ``RLOOTrainer``.

```bash
trl-extras rloo --config configs/rloo.yaml
trl-extras rloo --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct --dataset_name trl-lib/DeepMath-103K \
    --reward_funcs accuracy_reward --output_dir Qwen2.5-0.5B-RLOO
```
"""

from __future__ import annotations

import trl

from ._common import RLScriptArguments, build_parser, reward_funcs_from_args, train_policy


def main(script_args, training_args, model_args, dataset_args):
    reward_funcs = reward_funcs_from_args(script_args)
    return train_policy(
        trl.RLOOTrainer,
        script_args,
        training_args,
        model_args,
        dataset_args,
        subset="prompt",
        reward_funcs=reward_funcs,
    )


def make_parser(prog: str = "trl-extras rloo"):
    return build_parser(prog, RLScriptArguments, trl.RLOOConfig)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
