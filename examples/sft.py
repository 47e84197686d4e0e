"""SFT with TRL's own `SFTTrainer`: the layout of TRL's `trl/scripts/sft.py`, runnable offline.

The trainer is stock TRL; trl-extras adds no SFT trainer. The model it writes is the kind of policy the preference and
RL examples start from (the built-in task's `builtin:sentiment-sft` is this recipe on the task's reviews).

Run it:

    python examples/sft.py --output_dir outputs/sft-example --max_steps 20      # offline, the built-in task
    python examples/sft.py --model_name_or_path Qwen/Qwen2.5-0.5B --dataset_name trl-lib/Capybara \
        --learning_rate 2e-5 --output_dir Qwen2.5-0.5B-SFT
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml examples/sft.py --max_steps 20

Without `--model_name_or_path` the model is the built-in task's tiny untrained policy; without `--dataset_name` the
data is the task's prompt/completion reviews (`trl_extras.tasks`). Every field of `ScriptArguments`, `SFTConfig`,
`ModelConfig` and `DatasetMixtureConfig` is a flag, and `--config run.yaml` works as in TRL. The YAML configs in
`configs/` (with `builtin:` names and a before/after report) run with `trl-extras sft --config configs/sft.yaml`.
"""

import torch
from datasets import load_dataset
from trl import (
    DatasetMixtureConfig,
    ModelConfig,
    ScriptArguments,
    SFTConfig,
    SFTTrainer,
    TrlParser,
    get_dataset,
    get_peft_config,
    get_quantization_config,
)

from trl_extras.tasks import load_builtin_dataset, resolve_builtin_model


def main(script_args, training_args, model_args, dataset_args):
    # trl-extras: no model given -> the built-in task's tiny untrained policy (offline)
    model_name = model_args.model_name_or_path or resolve_builtin_model("builtin:sentiment-base")
    training_args.model_init_kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        **(training_args.model_init_kwargs or {}),
    }

    if dataset_args.datasets:
        dataset = get_dataset(dataset_args)
    elif script_args.dataset_name:
        dataset = load_dataset(
            script_args.dataset_name, name=script_args.dataset_config, streaming=script_args.dataset_streaming
        )
    else:  # trl-extras: no dataset given -> the built-in task's reviews (offline)
        dataset = load_builtin_dataset("builtin:sentiment", "sft")

    trainer = SFTTrainer(
        model=model_name,
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
        eval_dataset=dataset[script_args.dataset_test_split] if training_args.eval_strategy != "no" else None,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)

    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}.")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    trainer.end()  # finish the trackers and the process group
    return trainer


def make_parser():
    parser = TrlParser((ScriptArguments, SFTConfig, ModelConfig, DatasetMixtureConfig))
    # trl-extras: TRL's configs default to bf16, which a CPU-only machine rejects; bf16 only where a GPU supports it
    parser.set_defaults(bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return parser


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
