"""Diffusion-DPO with `trl_extras.DiffusionDPOTrainer` (docs/diffusion_dpo.md), taking the flags of diffusers'
`examples/research_projects/diffusion_dpo/train_diffusion_dpo.py`.

diffusers' script is a hand-written accelerate loop; here the same run is a `Trainer`: the loop, LoRA on the UNet's
attention projections, the frozen reference (the UNet with its adapter disabled), checkpoints and resume come from
`DiffusionDPOTrainer`, and this script only maps diffusers' flags onto `DiffusionDPOConfig`. The swap, for a command
you already have:

    accelerate launch train_diffusion_dpo.py --pretrained_model_name_or_path=... --dataset_name=kashif/pickascore ...
    ->  accelerate launch examples/diffusion_dpo.py --pretrained_model_name_or_path=... --dataset_name=kashif/pickascore ...

Mapped: `beta_dpo` (diffusers' loss has no 1/2, ours does: `beta = 2 * beta_dpo`, the same objective), `rank` (LoRA
r and alpha; `--rank 0` trains the whole UNet against a frozen copy), `train_batch_size`, `max_train_steps`,
`num_train_epochs`, `checkpointing_steps`, `checkpoints_total_limit`, `resume_from_checkpoint` (`latest` too),
`gradient_accumulation_steps`, `gradient_checkpointing`, `learning_rate`, `scale_lr`, `lr_scheduler`,
`lr_warmup_steps`, the Adam fields, `max_grad_norm`, `use_8bit_adam`, `mixed_precision`, `allow_tf32`, `seed`,
`resolution`, `no_hflip`, `random_crop`, `max_train_samples`, `dataset_split_name`, `revision`, `variant`,
`report_to`, `push_to_hub`, `hub_model_id`, `hub_token`. Different defaults: `resolution` is the model's native size
(512 for SD 1.5) and `report_to` is `none`. Not carried (every `DiffusionDPOConfig` field is on
`trl-extras diffusion-dpo` instead): `run_validation` (use `sample_prompts`), the hinge and IPO loss types,
`vae_encode_batch_size`, xformers, `prior_generation_precision`, `tracker_name`, `logging_dir`.

Run it:

    python examples/diffusion_dpo.py --output_dir outputs/diffusion-dpo-example --max_train_steps 20   # offline
    accelerate launch examples/diffusion_dpo.py --pretrained_model_name_or_path stable-diffusion-v1-5/stable-diffusion-v1-5 \
        --dataset_name kashif/pickascore --mixed_precision fp16 --train_batch_size 16 --gradient_accumulation_steps 2 \
        --gradient_checkpointing --rank 8 --learning_rate 1e-5 --max_train_steps 10000 --checkpointing_steps 2000

Without `--pretrained_model_name_or_path` the model is a tiny Stable-Diffusion-style pipeline with random weights
(`trl_extras.testing`, built and cached on first use); without `--dataset_name` the data is the built-in image task
(a warm-coloured square preferred over a cool one; `trl_extras.tasks`). `--config run.yaml` takes the same keys.
"""

from dataclasses import dataclass, field

from accelerate import PartialState
from datasets import load_dataset
from peft import LoraConfig
from trl import TrlParser

from trl_extras import DiffusionDPOConfig, DiffusionDPOTrainer
from trl_extras.tasks import load_builtin_dataset, resolve_builtin_model


@dataclass
class DiffusersArguments:
    """The flags of diffusers' train_diffusion_dpo.py that have a counterpart here, with diffusers' defaults."""

    pretrained_model_name_or_path: str | None = field(default=None, metadata={"help": "A diffusers pipeline."})
    revision: str | None = None
    variant: str | None = None
    dataset_name: str | None = field(default=None, metadata={"help": "Pick-a-Pic style pairs (jpg_0, jpg_1, ...)."})
    dataset_split_name: str = field(default="validation", metadata={"help": "The split of `dataset_name`."})
    max_train_samples: int | None = None
    output_dir: str = "diffusion-dpo-lora"
    seed: int | None = None
    resolution: int | None = field(default=None, metadata={"help": "Unset: the model's native size."})
    no_hflip: bool = False
    random_crop: bool = False
    train_batch_size: int = 4
    num_train_epochs: int = 1
    max_train_steps: int | None = None
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = None
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "A checkpoint directory or 'latest'."})
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    beta_dpo: float = 2500.0
    loss_type: str = field(default="sigmoid", metadata={"choices": ["sigmoid"]})
    learning_rate: float = 5e-4
    scale_lr: bool = False
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 500
    use_8bit_adam: bool = False
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    mixed_precision: str | None = field(default=None, metadata={"choices": [None, "no", "fp16", "bf16"]})
    allow_tf32: bool = False
    report_to: str = "none"
    rank: int = field(default=4, metadata={"help": "LoRA rank (and alpha); 0: full fine-tuning."})
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_token: str | None = None


def to_trainer_config(args: DiffusersArguments) -> DiffusionDPOConfig:
    learning_rate = args.learning_rate
    if args.scale_lr:  # as diffusers does: by the number of pairs per optimizer step
        learning_rate *= args.gradient_accumulation_steps * args.train_batch_size * PartialState().num_processes
    init_kwargs = {key: value for key in ("revision", "variant") if (value := getattr(args, key)) is not None}
    return DiffusionDPOConfig(
        output_dir=args.output_dir,
        seed=42 if args.seed is None else args.seed,
        beta=2 * args.beta_dpo,  # diffusers: -logsigmoid(beta_dpo * x); ours: -logsigmoid(beta / 2 * x)
        loss_type=args.loss_type,
        resolution=args.resolution,
        random_flip=not args.no_hflip,
        center_crop=not args.random_crop,
        per_device_train_batch_size=args.train_batch_size,
        num_train_epochs=args.num_train_epochs,
        max_steps=-1 if args.max_train_steps is None else args.max_train_steps,
        save_strategy="steps",
        save_steps=args.checkpointing_steps,
        save_total_limit=args.checkpoints_total_limit,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        gradient_checkpointing=args.gradient_checkpointing,
        learning_rate=learning_rate,
        lr_scheduler_type=args.lr_scheduler,
        warmup_steps=args.lr_warmup_steps,
        optim="adamw_bnb_8bit" if args.use_8bit_adam else "adamw_torch",
        adam_beta1=args.adam_beta1,
        adam_beta2=args.adam_beta2,
        weight_decay=args.adam_weight_decay,
        adam_epsilon=args.adam_epsilon,
        max_grad_norm=args.max_grad_norm,
        bf16=args.mixed_precision == "bf16",
        fp16=args.mixed_precision == "fp16",
        tf32=True if args.allow_tf32 else None,
        report_to=args.report_to,
        logging_steps=1,  # diffusers' script logs every step
        push_to_hub=args.push_to_hub,
        hub_model_id=args.hub_model_id,
        hub_token=args.hub_token,
        model_init_kwargs=init_kwargs or None,
    )


def main(args: DiffusersArguments):
    # trl-extras: no model given -> a tiny Stable-Diffusion-style pipeline (offline)
    model = args.pretrained_model_name_or_path or resolve_builtin_model("builtin:tiny-diffusion")
    if args.dataset_name:
        train_dataset = load_dataset(args.dataset_name, split=args.dataset_split_name)
    else:  # trl-extras: no dataset given -> the built-in warm-over-cool image pairs (offline)
        train_dataset = load_builtin_dataset("builtin:shapes", "image-preference")["train"]
    if args.max_train_samples is not None:
        train_dataset = train_dataset.shuffle(seed=args.seed).select(range(args.max_train_samples))

    peft_config = None
    if args.rank > 0:  # diffusers' LoRA: r = alpha = rank on the attention projections, Gaussian init
        peft_config = LoraConfig(
            r=args.rank,
            lora_alpha=args.rank,
            init_lora_weights="gaussian",
            target_modules=["to_k", "to_q", "to_v", "to_out.0"],
        )
    trainer = DiffusionDPOTrainer(
        model=model,
        args=to_trainer_config(args),
        train_dataset=train_dataset,
        peft_config=peft_config,
    )
    resume = True if args.resume_from_checkpoint == "latest" else args.resume_from_checkpoint
    trainer.train(resume_from_checkpoint=resume)

    # LoRA: pytorch_lora_weights.safetensors, for pipeline.load_lora_weights(output_dir), as diffusers' script writes;
    # --rank 0: the whole pipeline, for DiffusionPipeline.from_pretrained(output_dir)
    trainer.save_model(args.output_dir)
    trainer.accelerator.print(f"Model saved to {args.output_dir}.")
    if args.push_to_hub:
        trainer.push_to_hub(dataset_name=args.dataset_name)
    trainer.end()  # finish the trackers and the process group
    return trainer


def make_parser():
    return TrlParser((DiffusersArguments,))


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
