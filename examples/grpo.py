"""GRPO with TRL's own `GRPOTrainer`: the layout of TRL's `trl/scripts/grpo.py`, runnable offline.

The trainer is stock TRL. This script is the baseline the trl-extras online examples change by one import:

    from trl import GRPOConfig, GRPOTrainer
    ->  from trl_extras import ReMaxConfig, ReMaxTrainer     (examples/remax.py)
    ->  from trl_extras import PPOConfig, PPOTrainer         (examples/ppo.py, which adds a value model)

Run it:

    python examples/grpo.py --output_dir outputs/grpo-example --max_steps 20 --max_completion_length 32   # offline
    python examples/grpo.py --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct --dataset_name trl-lib/DeepMath-103K \
        --reward_funcs accuracy_reward --output_dir Qwen2.5-0.5B-GRPO
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml examples/grpo.py --max_steps 20

Without `--model_name_or_path` the policy is the built-in task's tiny SFT model (trained on first use, then cached);
without `--dataset_name` the prompts are the task's review openings, and without a reward the task's ground-truth
sentiment reward scores the completions (`trl_extras.tasks`). Every field of `GRPOScriptArguments`, `GRPOConfig`,
`ModelConfig` and `DatasetMixtureConfig` is a flag, and `--config run.yaml` works as in TRL. The YAML configs in
`configs/` (with `builtin:` names and a before/after report) run with `trl-extras grpo --config configs/grpo.yaml`.
"""

import importlib
from dataclasses import dataclass, field

import torch
from datasets import load_dataset
from trl import (
    DatasetMixtureConfig,
    GRPOConfig,
    GRPOTrainer,
    ModelConfig,
    ScriptArguments,
    TrlParser,
    get_dataset,
    get_peft_config,
    get_quantization_config,
)
from trl.rewards import accuracy_reward, reasoning_accuracy_reward, think_format_reward

from trl_extras.tasks import ground_truth_reward, load_builtin_dataset, resolve_builtin_model

REWARD_FUNCS = {
    "accuracy_reward": accuracy_reward,
    "reasoning_accuracy_reward": reasoning_accuracy_reward,
    "think_format_reward": think_format_reward,
}


@dataclass
class GRPOScriptArguments(ScriptArguments):
    reward_model_name_or_path: str | None = field(
        default=None, metadata={"help": "A reward model (sequence classifier): Hub id or local directory."}
    )
    reward_funcs: list[str] | None = field(
        default=None,
        metadata={"help": f"Reward functions: {', '.join(REWARD_FUNCS)} or a dotted import path (`my_lib.reward`)."},
    )


def get_reward_funcs(script_args) -> list:
    reward_funcs = [script_args.reward_model_name_or_path] if script_args.reward_model_name_or_path else []
    for name in script_args.reward_funcs or []:
        if name in REWARD_FUNCS:
            reward_funcs.append(REWARD_FUNCS[name])
        elif "." in name:
            module, function = name.rsplit(".", 1)
            reward_funcs.append(getattr(importlib.import_module(module), function))
        else:
            raise ValueError(f"reward_funcs: unknown {name!r}; expected one of {list(REWARD_FUNCS)} or a dotted path")
    # trl-extras: no reward given -> the built-in task's ground-truth sentiment reward (offline)
    return reward_funcs or [ground_truth_reward]


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
    else:  # trl-extras: no dataset given -> the built-in task's review openings (offline)
        dataset = load_builtin_dataset("builtin:sentiment", "prompt")

    trainer = GRPOTrainer(
        model=model_name,
        reward_funcs=get_reward_funcs(script_args),
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
    parser = TrlParser((GRPOScriptArguments, GRPOConfig, ModelConfig, DatasetMixtureConfig))
    # trl-extras: TRL's configs default to bf16, which a CPU-only machine rejects; bf16 only where a GPU supports it
    parser.set_defaults(bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return parser


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
