"""DPO with TRL's stock ``DPOTrainer``.

```bash
trl-extras dpo --config configs/dpo.yaml
trl-extras dpo --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct --dataset_name trl-lib/ultrafeedback_binarized \
    --learning_rate 5e-7 --output_dir Qwen2.5-0.5B-DPO
```

The trainer is TRL's ``DPOTrainer`` with one hook added (``trl_extras.trainer._length_check.PreferenceLengthCheck``):
rows whose prompt fills ``max_length`` are an error instead of being dropped silently (``drop_long_prompts: true``
drops them and says how many), and completions that ``max_length`` cuts are counted in a warning.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trl

from ..trainer._length_check import PreferenceLengthCheck
from ._common import ScriptArguments, build_parser, train_policy


@dataclass
class DPOConfig(trl.DPOConfig):
    """TRL's ``DPOConfig`` with the one field ``PreferenceLengthCheck`` reads."""

    drop_long_prompts: bool = field(
        default=False,
        metadata={
            "help": "Rows whose prompt alone fills `max_length` keep no completion token. False (default): they are "
            "an error naming how many and the longest prompt. True: they are dropped, with a warning giving the count."
        },
    )


class DPOTrainer(PreferenceLengthCheck, trl.DPOTrainer):
    """TRL's ``DPOTrainer``; ``max_length`` drops and cuts are counted (see ``PreferenceLengthCheck``)."""


def main(script_args, training_args, model_args, dataset_args):
    return train_policy(DPOTrainer, script_args, training_args, model_args, dataset_args, subset="preference")


def make_parser(prog: str = "trl-extras dpo"):
    return build_parser(prog, ScriptArguments, DPOConfig)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
