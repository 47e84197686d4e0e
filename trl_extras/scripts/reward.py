"""Reward modelling with TRL's stock ``RewardTrainer`` (Bradley-Terry on preference pairs).

```bash
trl-extras reward --config configs/reward.yaml
trl-extras reward --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct --dataset_name trl-lib/ultrafeedback_binarized \
    --output_dir Qwen2.5-0.5B-Reward
```

With PEFT the LoRA task type defaults to ``SEQ_CLS`` here (``ModelConfig``'s default ``CAUSAL_LM`` would not train the
score head), and the score head is trained in full (``lora_modules_to_save: [score]``) unless you set it. The
trainer is TRL's ``RewardTrainer`` with one hook added (``trl_extras.trainer._length_check.RewardPairLengthCheck``):
the pairs longer than ``max_length`` it drops are counted in a warning.
"""

from __future__ import annotations

import trl

from ..trainer._length_check import RewardPairLengthCheck
from ._common import ScriptArguments, build_parser, load_datasets, load_model, train_and_save


class RewardTrainer(RewardPairLengthCheck, trl.RewardTrainer):
    """TRL's ``RewardTrainer``; the pairs ``max_length`` drops are counted (see ``RewardPairLengthCheck``)."""


def main(script_args, training_args, model_args, dataset_args):
    from transformers import AutoModelForSequenceClassification

    if model_args.lora_task_type == "CAUSAL_LM":
        model_args.lora_task_type = "SEQ_CLS"
    if model_args.use_peft and model_args.lora_modules_to_save is None:
        model_args.lora_modules_to_save = ["score"]
    train_dataset, eval_dataset = load_datasets(script_args, dataset_args, training_args, default_subset="preference")
    trainer = RewardTrainer(
        **load_model(model_args, training_args, model_class=AutoModelForSequenceClassification, num_labels=1),
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
    )
    return train_and_save(trainer, script_args, training_args, role="reward_model")


def make_parser(prog: str = "trl-extras reward"):
    return build_parser(prog, ScriptArguments, trl.RewardConfig)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
