"""DPO with TRL's stock ``DPOTrainer``.

```bash
trl-extras dpo --config configs/dpo.yaml
trl-extras dpo --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct --dataset_name trl-lib/ultrafeedback_binarized \
    --learning_rate 5e-7 --output_dir Qwen2.5-0.5B-DPO
```
"""

from __future__ import annotations

import trl

from ._common import ScriptArguments, build_parser, load_datasets, load_model, train_and_save


def main(script_args, training_args, model_args, dataset_args):
    train_dataset, eval_dataset = load_datasets(script_args, dataset_args, training_args, default_subset="preference")
    trainer = trl.DPOTrainer(
        **load_model(model_args, training_args),
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
    )
    return train_and_save(trainer, script_args, training_args, role="policy")


def make_parser(prog: str = "trl-extras dpo"):
    return build_parser(prog, ScriptArguments, trl.DPOConfig)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
