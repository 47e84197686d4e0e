"""Unlikelihood training with `trl_extras.UnlikelihoodTrainer` (docs/unlikelihood.md): `examples/dpo.py`, TRL's DPO
script, with the trainer swapped.

The one change against TRL's `trl/scripts/dpo.py`:

    from trl import DPOConfig, DPOTrainer
    ->  from trl_extras import UnlikelihoodConfig, UnlikelihoodTrainer

The data (prompt/chosen/rejected pairs), the arguments, PEFT and QLoRA, saving and `accelerate launch` are DPO's;
the loss raises the likelihood of the chosen completion and pushes down the rejected one's tokens, with no reference
model.

Run it:

    python examples/unlikelihood.py --output_dir outputs/unlikelihood-example --max_steps 20   # offline, built-in task
    python examples/unlikelihood.py --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct \
        --dataset_name trl-lib/ultrafeedback_binarized --output_dir Qwen2.5-0.5B-Unlikelihood
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml examples/unlikelihood.py --max_steps 20

Without `--model_name_or_path` the policy is the built-in task's tiny SFT model (trained on first use, then cached);
without `--dataset_name` the data is the task's preference pairs (`trl_extras.tasks`). Every field of
`ScriptArguments`, `UnlikelihoodConfig`, `ModelConfig` and `DatasetMixtureConfig` is a flag, and `--config run.yaml`
works as in TRL. The YAML configs in `configs/` (with `builtin:` names and a before/after report) run with
`trl-extras unlikelihood --config configs/unlikelihood.yaml`.
"""

import torch
from datasets import load_dataset
from trl import (
    DatasetMixtureConfig,
    ModelConfig,
    ScriptArguments,
    TrlParser,
    get_dataset,
    get_peft_config,
    get_quantization_config,
)

from trl_extras import UnlikelihoodConfig, UnlikelihoodTrainer
from trl_extras.tasks import load_builtin_dataset, resolve_builtin_model


def main(script_args, training_args, model_args, dataset_args):
    # trl-extras: no model given -> the built-in task's tiny policy (offline)
    model_name = model_args.model_name_or_path or resolve_builtin_model("builtin:sentiment-sft")
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
    else:  # trl-extras: no dataset given -> the built-in task's preference pairs (offline)
        dataset = load_builtin_dataset("builtin:sentiment", "preference")

    trainer = UnlikelihoodTrainer(
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
    parser = TrlParser((ScriptArguments, UnlikelihoodConfig, ModelConfig, DatasetMixtureConfig))
    # trl-extras: TRL's configs default to bf16, which a CPU-only machine rejects; bf16 only where a GPU supports it
    parser.set_defaults(bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return parser


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
