"""mDPO (multimodal DPO for vision-language models) with trl-extras' ``MDPOTrainer``.

```bash
trl-extras mdpo --config configs/mdpo.yaml
trl-extras mdpo --model_name_or_path Qwen/Qwen2.5-VL-3B-Instruct --dataset_name HuggingFaceH4/rlaif-v_formatted \
    --output_dir Qwen2.5-VL-3B-mDPO
```

The dataset is a vision preference dataset (``images`` plus ``prompt``/``chosen``/``rejected``); the model is loaded by
``DPOTrainer`` with its processor. With QLoRA (``load_in_4bit``) it is loaded as ``AutoModelForImageTextToText``.
"""

from __future__ import annotations

from ._common import ScriptArguments, build_parser, train_policy


def main(script_args, training_args, model_args, dataset_args):
    from transformers import AutoModelForImageTextToText

    from trl_extras import MDPOTrainer

    return train_policy(
        MDPOTrainer,
        script_args,
        training_args,
        model_args,
        dataset_args,
        subset="vision-preference",
        role="vlm_policy",
        model_class=AutoModelForImageTextToText,
    )


def make_parser(prog: str = "trl-extras mdpo"):
    from trl_extras import MDPOConfig

    return build_parser(prog, ScriptArguments, MDPOConfig)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
