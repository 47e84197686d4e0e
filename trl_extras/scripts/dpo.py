"""DPO with TRL's stock ``DPOTrainer``.

```bash
trl-extras dpo --config configs/dpo.yaml
trl-extras dpo --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct --dataset_name trl-lib/ultrafeedback_binarized \
    --learning_rate 5e-7 --output_dir Qwen2.5-0.5B-DPO
```
"""

from __future__ import annotations

import trl

from ._common import ScriptArguments, build_parser, train_policy


def main(script_args, training_args, model_args, dataset_args):
    from trl_extras.data import validate_preference_dataset

    return train_policy(
        trl.DPOTrainer,
        script_args,
        training_args,
        model_args,
        dataset_args,
        subset="preference",
        check_dataset=validate_preference_dataset,
    )


def make_parser(prog: str = "trl-extras dpo"):
    return build_parser(prog, ScriptArguments, trl.DPOConfig)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
