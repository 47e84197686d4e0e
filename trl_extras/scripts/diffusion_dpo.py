"""Diffusion-DPO (text-to-image) with trl-extras' ``DiffusionDPOTrainer``.

```bash
trl-extras diffusion-dpo --config configs/diffusion_dpo.yaml
trl-extras diffusion-dpo --model_name_or_path stable-diffusion-v1-5/stable-diffusion-v1-5 \
    --dataset_name yuvalkirstain/pickapic_v2 --use_peft --output_dir sd15-diffusion-dpo
```

``model_name_or_path`` is a diffusers pipeline; the trainer picks the family from it (Stable Diffusion 1.x/2.x, SDXL,
SD3/SD3.5, Flux.1, Sana; per-family configs in ``configs/diffusion_dpo/``). The dataset holds Pick-a-Pic rows
(``caption``, ``jpg_0``, ``jpg_1``, ``label_0``) or ``caption``/``chosen``/``rejected`` images; with ``reward_funcs``
(import paths ``module:function`` of GRPO-style image rewards) it holds prompts and the pairs are sampled online.
``use_peft`` trains LoRA adapters on the denoiser (``lora_target_modules`` unset: the family's attention
projections); ``load_in_4bit`` with ``use_peft`` is QLoRA through ``trl_extras.QLoRAConfig`` (diffusers' 4-bit loader
needs a CUDA GPU). ``ModelConfig``'s text-model fields (``dtype``, ``attn_implementation``, ``lora_task_type``) do not
apply; pipeline loading options go in ``model_init_kwargs``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._common import (
    ConfigError,
    ScriptArguments,
    build_parser,
    load_datasets,
    qlora_config,
    resolve_model_path,
    train_and_save,
)


@dataclass
class DiffusionDPOScriptArguments(ScriptArguments):
    """Script arguments, plus the image reward functions of online pairs."""

    reward_funcs: list[str] | None = field(
        default=None,
        metadata={
            "help": "Online pairs: image reward functions as import paths `module:function`, each "
            "f(prompts, completions, **kwargs) -> list[float] over PIL images (TRL's GRPO signature). The dataset "
            "then needs a `prompt` or `caption` column only. Unset: train on the dataset's image pairs."
        },
    )


def _reward_funcs(script_args) -> list:
    from trl_extras.rewards import resolve_reward_funcs

    functions = resolve_reward_funcs(script_args.reward_funcs)
    for name, function in zip(script_args.reward_funcs or [], functions):
        if not callable(function):
            raise ConfigError(
                f"reward_funcs: {name!r} resolves to a text reward model; Diffusion-DPO scores images, so give an "
                "import path `module:function` of an image reward."
            )
    return functions


def _adapters(model_args, training_args) -> dict:
    """``peft_config`` (LoRA on the UNet) and ``quantization_config`` (QLoRA) from ``ModelConfig``'s switches."""
    if model_args.load_in_4bit:
        if not model_args.use_peft:
            raise ConfigError("load_in_4bit: 4-bit base weights cannot be trained; set use_peft: true (QLoRA)")
        return {"peft_config": None, "quantization_config": qlora_config(model_args, training_args, None)}
    if not model_args.use_peft:
        return {"peft_config": None, "quantization_config": None}
    from peft import LoraConfig

    peft_config = LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules,  # None: the trainer's default UNet attention projections
        init_lora_weights="gaussian",
    )
    return {"peft_config": peft_config, "quantization_config": None}


def main(script_args, training_args, model_args, dataset_args):
    from trl_extras import DiffusionDPOTrainer

    model = resolve_model_path(model_args.model_name_or_path)
    reward_funcs = _reward_funcs(script_args)
    train_dataset, eval_dataset = load_datasets(
        script_args, dataset_args, training_args, default_subset="image-preference"
    )
    if reward_funcs:  # online: prompts only (a built-in pair dataset keeps its captions)
        image_columns = [
            c for c in ("chosen", "rejected", "jpg_0", "jpg_1", "label_0") if c in train_dataset.column_names
        ]
        train_dataset = train_dataset.remove_columns(image_columns)
    trainer = DiffusionDPOTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        reward_funcs=reward_funcs or None,
        **_adapters(model_args, training_args),
    )
    trainer.accelerator.print(
        f"Diffusion-DPO on a {type(trainer.pipeline).__name__}: family {trainer.family.name!r}, "
        f"{'online pairs' if reward_funcs else 'dataset pairs'}, "
        f"{'LoRA (reference: adapter disabled)' if trainer.is_peft else 'full fine-tuning (frozen reference copy)'}."
    )
    return train_and_save(trainer, script_args, training_args, role="diffusion")


def make_parser(prog: str = "trl-extras diffusion-dpo"):
    from trl_extras import DiffusionDPOConfig

    return build_parser(prog, DiffusionDPOScriptArguments, DiffusionDPOConfig)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
