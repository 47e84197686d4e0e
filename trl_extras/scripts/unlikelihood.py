"""Unlikelihood training on preference pairs with trl-extras' ``UnlikelihoodTrainer``.

```bash
trl-extras unlikelihood --config configs/unlikelihood.yaml
trl-extras unlikelihood --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct \
    --dataset_name trl-lib/ultrafeedback_binarized --output_dir Qwen2.5-0.5B-Unlikelihood
```
"""

from __future__ import annotations

from ._common import ScriptArguments, build_parser, train_policy


def main(script_args, training_args, model_args, dataset_args):
    from trl_extras import UnlikelihoodTrainer

    return train_policy(UnlikelihoodTrainer, script_args, training_args, model_args, dataset_args, subset="preference")


def make_parser(prog: str = "trl-extras unlikelihood"):
    from trl_extras import UnlikelihoodConfig

    return build_parser(prog, ScriptArguments, UnlikelihoodConfig)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
