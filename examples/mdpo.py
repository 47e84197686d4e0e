"""mDPO for vision-language models with `trl_extras.MDPOTrainer` (docs/mdpo.md): TRL's VLM DPO example
(`examples/scripts/dpo_vlm.py`) with the trainer swapped.

The one change against TRL's script:

    from trl import DPOConfig, DPOTrainer
    ->  from trl_extras import MDPOConfig, MDPOTrainer

The model and processor loading, the data (`images` plus `prompt`/`chosen`/`rejected`, as in
`HuggingFaceH4/rlaif-v_formatted`), PEFT and QLoRA, saving and `accelerate launch` are DPO's; the loss adds mDPO's
conditional preference on the image (the chosen answer with the true image over a corrupted one) and an anchor on the
chosen reward.

Run it:

    python examples/mdpo.py --output_dir outputs/mdpo-example --max_steps 20 --learning_rate 1e-2   # offline
    accelerate launch examples/mdpo.py --model_name_or_path Qwen/Qwen2.5-VL-3B-Instruct \
        --dataset_name HuggingFaceH4/rlaif-v_formatted --per_device_train_batch_size 2 \
        --gradient_accumulation_steps 32 --dtype bfloat16 --use_peft --lora_target_modules all-linear \
        --output_dir Qwen2.5-VL-3B-mDPO

Without `--model_name_or_path` the model is a tiny Llava-style VLM with random weights (`trl_extras.testing`, built
and cached on first use); without `--dataset_name` the data is the built-in coloured-squares task (which colour is
the square? the true colour is preferred; `trl_extras.tasks`). Every field of `ScriptArguments`, `MDPOConfig`,
`ModelConfig` and `DatasetMixtureConfig` is a flag, and `--config run.yaml` works as in TRL. The YAML configs in
`configs/` (with `builtin:` names and a before/after report) run with `trl-extras mdpo --config configs/mdpo.yaml`.
"""

import torch
from datasets import load_dataset
from transformers import AutoModelForImageTextToText, AutoProcessor
from trl import (
    DatasetMixtureConfig,
    ModelConfig,
    ScriptArguments,
    TrlParser,
    get_dataset,
    get_peft_config,
    get_quantization_config,
)

from trl_extras import MDPOConfig, MDPOTrainer
from trl_extras.tasks import load_builtin_dataset, resolve_builtin_model


def main(script_args, training_args, model_args, dataset_args):
    # trl-extras: no model given -> a tiny vision-language model (offline)
    model_name = model_args.model_name_or_path or resolve_builtin_model("builtin:tiny-vlm")
    dtype = model_args.dtype if model_args.dtype in ["auto", None] else getattr(torch, model_args.dtype)
    model_kwargs = {"revision": model_args.model_revision, "attn_implementation": model_args.attn_implementation}
    model_kwargs["dtype"] = dtype
    quantization_config = get_quantization_config(model_args)
    if quantization_config is not None:
        model_kwargs["quantization_config"] = quantization_config
    model = AutoModelForImageTextToText.from_pretrained(model_name, **model_kwargs)
    processor = AutoProcessor.from_pretrained(model_name)

    if dataset_args.datasets:
        dataset = get_dataset(dataset_args)
    elif script_args.dataset_name:
        dataset = load_dataset(
            script_args.dataset_name, name=script_args.dataset_config, streaming=script_args.dataset_streaming
        )
    else:  # trl-extras: no dataset given -> the built-in coloured-squares preference pairs (offline)
        dataset = load_builtin_dataset("builtin:shapes", "vision-preference")

    trainer = MDPOTrainer(
        model,
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
        eval_dataset=dataset[script_args.dataset_test_split] if training_args.eval_strategy != "no" else None,
        processing_class=processor,
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
    parser = TrlParser((ScriptArguments, MDPOConfig, ModelConfig, DatasetMixtureConfig))
    # trl-extras: TRL's configs default to bf16, which a CPU-only machine rejects; bf16 only where a GPU supports it
    parser.set_defaults(bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return parser


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
