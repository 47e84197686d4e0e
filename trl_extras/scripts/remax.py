"""ReMax (REINFORCE with a greedy baseline) with trl-extras' ``ReMaxTrainer``.

```bash
trl-extras remax --config configs/remax.yaml
trl-extras remax --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct --dataset_name trl-lib/DeepMath-103K \
    --reward_funcs accuracy_reward --output_dir Qwen2.5-0.5B-ReMax
```
"""

from __future__ import annotations

from ._common import (
    RLScriptArguments,
    build_parser,
    load_datasets,
    load_model,
    reward_funcs_from_args,
    train_and_save,
)


def main(script_args, training_args, model_args, dataset_args):
    from trl_extras import ReMaxTrainer

    reward_funcs = reward_funcs_from_args(script_args)
    train_dataset, eval_dataset = load_datasets(script_args, dataset_args, training_args, default_subset="prompt")
    trainer = ReMaxTrainer(
        **load_model(model_args, training_args),
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
    )
    return train_and_save(trainer, script_args, training_args, role="policy")


def make_parser(prog: str = "trl-extras remax"):
    from trl_extras import ReMaxConfig

    return build_parser(prog, RLScriptArguments, ReMaxConfig)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
