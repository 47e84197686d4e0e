"""SFT with TRL's stock ``SFTTrainer``.

```bash
trl-extras sft --config configs/sft.yaml
trl-extras sft --model_name_or_path Qwen/Qwen2.5-0.5B --dataset_name trl-lib/Capybara --output_dir Qwen2.5-0.5B-SFT
```
"""

from __future__ import annotations

import trl

from ._common import ScriptArguments, build_parser, train_policy


def main(script_args, training_args, model_args, dataset_args):
    return train_policy(trl.SFTTrainer, script_args, training_args, model_args, dataset_args, subset="sft", role="lm")


def make_parser(prog: str = "trl-extras sft"):
    return build_parser(prog, ScriptArguments, trl.SFTConfig)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
