"""What every ``trl-extras`` training script shares: arguments, dataset and model loading, the before/after report.

The scripts follow TRL's ``trl/scripts/<name>.py``: a ``make_parser()`` building (with ``build_parser``) a ``TrlParser`` over
``(script arguments, <Trainer>Config, ModelConfig, DatasetMixtureConfig)`` and a ``main(script_args, training_args,
model_args, dataset_args)`` that builds the trainer and trains. On top of TRL's scripts they add:

- ``builtin:`` names for the bundled offline task (see ``trl_extras.tasks.registry``);
- local data files as ``dataset_name`` (``.json``, ``.jsonl``, ``.csv``, ``.parquet``, or a list of them);
- the QLoRA 4-bit switch (``load_in_4bit: true`` with ``use_peft: true``) routed through
  ``trl_extras.quantization.load_qlora_model``, the one QLoRA path of the package;
- ``bf16`` defaulting to whether a CUDA device supports it, instead of TRL's unconditional ``True``;
- on a CPU, built-in (tiny) models train with one intra-op thread, which is faster for models that small;
- on a built-in task, a number measured before and after training (ground-truth reward, perplexity or accuracy).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import trl

__all__ = [
    "ConfigError",
    "RLScriptArguments",
    "ScriptArguments",
    "build_parser",
    "load_datasets",
    "load_model",
    "qlora_config",
    "resolve_model_path",
    "reward_funcs_from_args",
    "train_and_save",
]

DATA_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}

# Set when ``trainer.train()`` starts: the CLI prints errors raised before that point as one line (they are about the
# config, the data or the model), and lets later ones through with their traceback (they are bugs or runtime faults).
TRAINING_STARTED = False


class ConfigError(ValueError):
    """A config value that cannot work, with the offending field named first: ``field: what is wrong``."""


@dataclass
class ScriptArguments(trl.ScriptArguments):
    """TRL's script arguments, with local files and built-in tasks accepted as ``dataset_name``."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub dataset name, local data file(s) (.json/.jsonl/.csv/.parquet; several separated by commas), "
            "or a built-in task (`builtin:sentiment`). Ignored if `datasets` is given."
        },
    )
    on_invalid: str = field(
        default="raise",
        metadata={
            "help": "Rows of a text dataset that no trainer can use (empty strings, missing values, a user turn in a "
            "completion, ...): 'raise' (default) stops with the row and column named; 'drop' drops them and logs how "
            "many and why.",
            "choices": ["raise", "drop"],
        },
    )
    eval_samples: int = field(
        default=32,
        metadata={
            "help": "Built-in tasks only: how many held-out samples measure the model before and after training "
            "(ground-truth reward, perplexity or preference accuracy). 0 turns the measurement off."
        },
    )


@dataclass
class RLScriptArguments(ScriptArguments):
    """Script arguments of online trainers (GRPO, RLOO, ReMax, PPO): where the reward comes from."""

    reward_funcs: list[str] | None = field(
        default=None,
        metadata={
            "help": "Reward functions: TRL names (`accuracy_reward`, `think_format_reward`, ...), `builtin:sentiment`, "
            "an import path `module:function`, or reward model paths. See trl_extras.rewards."
        },
    )
    reward_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A reward model (local directory, Hub id or `builtin:sentiment-rm`), added to `reward_funcs`."
        },
    )


class _Parser(trl.TrlParser):
    """``TrlParser`` whose argparse errors (bad values, bad types) become a ``ConfigError`` instead of usage + exit,
    and whose values pass ``trl_extras.validation.check_config`` before the configs are built (so a bad value is
    reported by its field, not by whatever a ``__post_init__`` or the trainer trips over later)."""

    def error(self, message: str):
        raise ConfigError(message)

    def parse_known_args(self, args=None, namespace=None):
        from trl_extras.validation import check_config

        namespace, remaining = super().parse_known_args(args, namespace)
        try:
            check_config(namespace, self.dataclass_types[1])  # (script arguments, trainer config, ...)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        return namespace, remaining


def _bf16_default() -> bool:
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def build_parser(prog: str, script_class: type, config_class: type) -> trl.TrlParser:
    """The ``TrlParser`` of one subcommand, as TRL's scripts build it, with ``bf16`` defaulting to the hardware."""
    parser = _Parser(
        (script_class, config_class, trl.ModelConfig, trl.DatasetMixtureConfig), prog=prog, allow_abbrev=False
    )
    parser.set_defaults(bf16=_bf16_default())
    return parser


# ---------------------------------------------------------------------------------------------------------------------
# datasets


def _data_files(name: str) -> list[str] | None:
    """The local files ``dataset_name`` names, or ``None`` if it is not a file name."""
    files = [part.strip() for part in name.split(",")]
    if not all(os.path.splitext(part)[1].lower() in DATA_FILE_BUILDERS for part in files):
        return None
    return files


def _is_empty_file(path: str) -> bool:
    """No bytes, or only whitespace (a JSONL file with blank lines has no rows either)."""
    with open(path, "rb") as file:
        return not file.read(1 << 16).strip() and os.path.getsize(path) < (1 << 16)


def load_datasets(script_args, dataset_args, training_args, *, default_subset: str):
    """The ``(train, eval)`` datasets: a mixture (``datasets``), a built-in task, local files, or a Hub dataset,
    checked by ``check_dataset``.

    ``eval`` is ``None`` unless ``eval_strategy`` is not ``"no"``. ``default_subset`` picks the built-in subset
    (``sft``, ``preference``, ``prompt``, ...) when ``dataset_config`` does not.
    """
    import datasets

    from trl_extras.tasks import registry

    name = script_args.dataset_name
    if dataset_args.datasets:
        dataset = trl.get_dataset(dataset_args)
    elif name is None:
        raise ConfigError("dataset_name: required (a Hub dataset, local data files, or builtin:sentiment)")
    elif registry.is_builtin(name):
        try:
            dataset = registry.load_builtin_dataset(name, script_args.dataset_config or default_subset)
        except ValueError as error:
            raise ConfigError(f"dataset_name: {error}") from None
    elif (files := _data_files(name)) is not None:
        missing = [path for path in files if not os.path.isfile(path)]
        if missing:
            raise ConfigError(f"dataset_name: data file not found: {', '.join(missing)}")
        builders = {DATA_FILE_BUILDERS[os.path.splitext(path)[1].lower()] for path in files}
        if len(builders) > 1:
            raise ConfigError(f"dataset_name: data files of different formats cannot be mixed: {name}")
        empty = [path for path in files if _is_empty_file(path)]
        if empty:
            raise ConfigError(f"dataset_name: data file is empty (no rows): {', '.join(empty)}")
        try:
            dataset = datasets.load_dataset(
                builders.pop(),
                data_files={script_args.dataset_train_split: files},
                streaming=script_args.dataset_streaming,
            )
        except Exception as error:  # datasets wraps parse errors in DatasetGenerationError, StopIteration, ...
            cause = error.__cause__ or error
            raise ConfigError(
                f"dataset_name: cannot read {name}: {type(cause).__name__}: {str(cause)[:300]}"
            ) from error
    elif name.startswith((".", "/", "~")) and not os.path.exists(os.path.expanduser(name)):
        raise ConfigError(f"dataset_name: local dataset path not found: {name}")
    else:
        dataset = datasets.load_dataset(
            os.path.expanduser(name), name=script_args.dataset_config, streaming=script_args.dataset_streaming
        )

    splits = list(dataset)
    if script_args.dataset_train_split not in dataset:
        raise ConfigError(
            f"dataset_train_split: split {script_args.dataset_train_split!r} not in the dataset (splits: {splits})"
        )
    eval_dataset = None
    if training_args.eval_strategy != "no":
        if script_args.dataset_test_split not in dataset:
            raise ConfigError(
                f"dataset_test_split: split {script_args.dataset_test_split!r} not in the dataset (splits: {splits}); "
                "set eval_strategy: 'no' to train without evaluation"
            )
        eval_dataset = dataset[script_args.dataset_test_split]
    train_dataset = check_dataset(dataset[script_args.dataset_train_split], default_subset, script_args, training_args)
    if eval_dataset is not None:
        eval_dataset = check_dataset(eval_dataset, default_subset, script_args, training_args)
    return train_dataset, eval_dataset


def check_dataset(dataset, subset: str, script_args, training_args):
    """The dataset checked (and, with ``on_invalid: drop``, cleaned) by ``trl_extras.data`` for the kind of data
    ``subset`` names, before any model loads: every trainer, stock or ours, gets the same row-level errors. Image
    data (``vision-preference``, ``image-preference``) is left to the trainer, which decodes every image once."""
    from trl_extras import data

    on_invalid = getattr(script_args, "on_invalid", "raise")
    if subset == "preference":
        return data.validate_preference_dataset(dataset, on_invalid=on_invalid)
    if subset == "prompt":
        return data.validate_prompt_dataset(dataset, on_invalid=on_invalid)
    if subset == "sft":
        text_field = getattr(training_args, "dataset_text_field", "text")
        return data.validate_sft_dataset(dataset, dataset_text_field=text_field, on_invalid=on_invalid)
    return dataset


# ---------------------------------------------------------------------------------------------------------------------
# rewards


def reward_funcs_from_args(script_args) -> list:
    """``reward_model_name_or_path`` (if set) followed by every ``reward_funcs`` entry, resolved.

    See ``trl_extras.rewards`` for the accepted forms. On a built-in dataset with no reward given, the task's
    ground-truth reward is used.
    """
    from trl_extras.rewards import check_reward_funcs, resolve_reward_func, resolve_reward_funcs
    from trl_extras.tasks import registry

    reward_funcs = []
    if script_args.reward_model_name_or_path:
        path = resolve_model_path(script_args.reward_model_name_or_path, "reward_model_name_or_path")
        reward_funcs.append(resolve_reward_func(path, "reward_model_name_or_path"))
    reward_funcs += resolve_reward_funcs(script_args.reward_funcs)
    if not reward_funcs:
        name = script_args.dataset_name
        if registry.is_builtin(name) and name in registry.builtin_names("reward"):
            return check_reward_funcs([registry.resolve_builtin_reward(name)])
        raise ConfigError(
            "reward_funcs: required (TRL reward names, `module:function` import paths or reward model paths), "
            "or set reward_model_name_or_path"
        )
    return check_reward_funcs(reward_funcs)  # a bad reward names the function and the row (trl_extras.rewards)


# ---------------------------------------------------------------------------------------------------------------------
# models


def _one_thread_for_tiny_models() -> None:
    """Built-in models are tiny: on a CPU, one intra-op thread is as fast, and many times faster on a busy machine
    (threads that wait for a core stall every matmul). The CLI restores the thread count when the command ends."""
    import torch

    if not torch.cuda.is_available():
        torch.set_num_threads(1)


def resolve_model_path(name: str | None, field_name: str = "model_name_or_path") -> str:
    """A ``builtin:`` model -> its cached directory; a local path must exist; anything else is a Hub id, unchanged."""
    from trl_extras.tasks import registry

    if not name:
        raise ConfigError(f"{field_name}: required (a Hub model id, a local directory, or builtin:sentiment-sft)")
    if registry.is_builtin(name):
        _one_thread_for_tiny_models()
        try:
            return registry.resolve_builtin_model(name)
        except ValueError as error:
            raise ConfigError(f"{field_name}: {error}") from None
    expanded = os.path.expanduser(name)
    if name.startswith((".", "/", "~")) and not os.path.isdir(expanded):
        raise ConfigError(f"{field_name}: model directory not found: {name}")
    return expanded if os.path.isdir(expanded) else name


def qlora_config(model_args, training_args, task_type: str | None):
    """``trl_extras.QLoRAConfig`` from ``ModelConfig``'s 4-bit and LoRA fields (compute dtype: ``dtype``, else the
    mixed-precision setting)."""
    from trl_extras.quantization import QLoRAConfig

    dtype = model_args.dtype if model_args.dtype in ("bfloat16", "float16", "float32") else None
    if dtype is None:
        dtype = "bfloat16" if training_args.bf16 else "float16" if training_args.fp16 else "float32"
    target_modules = model_args.lora_target_modules or "all-linear"
    return QLoRAConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=model_args.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=model_args.use_bnb_nested_quant,
        bnb_4bit_compute_dtype=dtype,
        lora_r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        lora_target_modules=target_modules,
        lora_modules_to_save=model_args.lora_modules_to_save,
        task_type=task_type,
        gradient_checkpointing=training_args.gradient_checkpointing,
    )


def load_model(model_args, training_args, *, model_class=None, num_labels: int | None = None) -> dict[str, Any]:
    """Trainer keyword arguments for the policy: ``model``, ``peft_config`` and ``quantization_config``.

    Without 4-bit this is TRL's path: ``model`` is the (resolved) name, the trainer loads it with
    ``training_args.model_init_kwargs``, and ``peft_config`` comes from ``ModelConfig``. With ``load_in_4bit: true``
    (which needs ``use_peft: true``) the model is loaded here by ``trl_extras.quantization.load_qlora_model`` and
    handed over as a ``PeftModel``, so every trainer gets QLoRA the same way.

    ``model_class`` is the transformers auto class the trainer would use (the causal LM by default); ``num_labels``
    is passed to it for reward models.
    """
    path = resolve_model_path(model_args.model_name_or_path)
    model_args.model_name_or_path = path
    if model_args.load_in_4bit:
        if not model_args.use_peft:
            raise ConfigError("load_in_4bit: 4-bit base weights cannot be trained; set use_peft: true (QLoRA)")
        from trl_extras.quantization import load_qlora_model

        kwargs = {"revision": model_args.model_revision, "trust_remote_code": training_args.trust_remote_code}
        if model_args.attn_implementation is not None:
            kwargs["attn_implementation"] = model_args.attn_implementation
        if num_labels is not None:
            kwargs["num_labels"] = num_labels
        qlora = qlora_config(model_args, training_args, model_args.lora_task_type)
        model = load_qlora_model(path, qlora, model_class=model_class, **kwargs)
        if num_labels is not None and model.config.pad_token_id is None:
            model.config.pad_token_id = model.config.eos_token_id
        return {"model": model, "peft_config": None, "quantization_config": None}

    model_init_kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    if training_args.model_init_kwargs is not None:
        model_init_kwargs.update(training_args.model_init_kwargs)
    training_args.model_init_kwargs = model_init_kwargs
    return {
        "model": path,
        "peft_config": trl.get_peft_config(model_args),
        "quantization_config": trl.get_quantization_config(model_args),
    }


# ---------------------------------------------------------------------------------------------------------------------
# training and the before/after report


def train_and_save(trainer, script_args, training_args, *, role: str, evaluation=None) -> dict[str, float] | None:
    """Train, save, push if asked, and on a built-in task print a number measured before and after training.

    ``role`` says what the trained model is (``"policy"``, ``"lm"``, ``"reward_model"``) and so what is measured;
    ``evaluation`` overrides it with an explicit ``trl_extras.tasks.registry.Evaluation``. Returns
    ``{"before": ..., "after": ...}`` when something was measured, else ``None``.
    """
    global TRAINING_STARTED
    from trl_extras._distributed import engine_fallback_notice
    from trl_extras.checkpointing import make_checkpoint_safe
    from trl_extras.quantization import keep_4bit_training_exact
    from trl_extras.tasks import registry

    keep_4bit_training_exact(trainer.model)  # stock trainers: CPU repack off, TRL's bf16 adapter cast undone
    make_checkpoint_safe(trainer)  # TRL's stock trainers too: completion-marked checkpoints, strict resume

    print_ = trainer.accelerator.print
    state = trainer.accelerator.state
    print_(f"Running on {state.num_processes} process(es), {state.distributed_type.value}, device {state.device}.")
    notice = engine_fallback_notice(state.distributed_type.value)
    if notice is not None:
        print_(notice)
    if evaluation is None:
        max_new_tokens = getattr(training_args, "max_completion_length", None) or 40
        evaluation = registry.evaluation_for(
            script_args.dataset_name,
            role,
            num_samples=script_args.eval_samples,
            max_new_tokens=min(max_new_tokens, 40),
        )
    if evaluation is not None and evaluation.calls_trainer_evaluate and state.distributed_type.value == "DEEPSPEED":
        print_(
            f"[{script_args.dataset_name}] before/after report skipped under DeepSpeed: it runs `Trainer.evaluate`, "
            "which before `train` builds an inference-only engine that training cannot use (ZeRO-3) or refuses "
            "('ZeRO inference only makes sense with ZeRO Stage 3'). Run without DeepSpeed to see it."
        )
        evaluation = None
    report = None
    if evaluation is not None:
        before, samples = evaluation.measure(trainer)
        print_(f"[{script_args.dataset_name}] {evaluation.description}, before training: {evaluation.format(before)}")
        for sample in samples:
            print_(f"    before | {sample}")

    TRAINING_STARTED = True
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.accelerator.print("Training completed.")

    if evaluation is not None:
        after, samples = evaluation.measure(trainer)
        change = after - before
        better = change > 0 if evaluation.higher_is_better else change < 0
        verdict = "better" if better else "not better"
        print_(f"[{script_args.dataset_name}] {evaluation.description}:")
        print_(
            f"    before {evaluation.format(before)} -> after {evaluation.format(after)} "
            f"({format(change, '+' + evaluation.value_format.lstrip('+'))}, {verdict})"
        )
        for sample in samples:
            print_(f"    after  | {sample}")
        report = {"before": before, "after": after}

    trainer.save_model(training_args.output_dir)
    print_(f"Model saved to {training_args.output_dir}.")
    if training_args.push_to_hub:
        dataset_name = None if registry.is_builtin(script_args.dataset_name) else script_args.dataset_name
        trainer.push_to_hub(dataset_name=dataset_name)
        print_(f"Model pushed to the Hub: https://huggingface.co/{trainer.hub_model_id}.")
    if hasattr(trainer, "end"):  # transformers >= 5.18: finish the trackers and the process group
        trainer.end()
    return report


def train_policy(
    trainer_class,
    script_args,
    training_args,
    model_args,
    dataset_args,
    *,
    subset: str,
    role: str = "policy",
    model_class=None,
    **trainer_kwargs,
):
    """The body the model-training scripts share: load data and model, build ``trainer_class``, train, report.

    ``subset`` is the built-in task's dataset kind (``"prompt"`` for online RL, ``"preference"``, ``"sft"``, ...),
    ``role`` the kind of before/after report ``train_and_save`` prints, ``model_class`` the auto class for 4-bit
    loading, and ``trainer_kwargs`` the trainer's own extra arguments (reward functions, a value model).
    """
    train_dataset, eval_dataset = load_datasets(script_args, dataset_args, training_args, default_subset=subset)
    trainer = trainer_class(
        **load_model(model_args, training_args, model_class=model_class),
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        **trainer_kwargs,
    )
    return train_and_save(trainer, script_args, training_args, role=role)
