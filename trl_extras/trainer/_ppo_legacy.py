"""The TRL <= 1.12 call path of :class:`~trl_extras.trainer.ppo_trainer.PPOTrainer` and its config.

TRL removed its `PPOTrainer` (PR 7020). Scripts written for it (TRL 0.12-1.12, and the `PPOv2Trainer` of 0.11)
run here with the import swapped: this module maps the old constructor arguments and `PPOConfig` fields onto the
current ones, raises an error that says what to write instead for what cannot be mapped, and emits one
`FutureWarning` per trainer listing what it mapped. The tables below are the one source of the mapping: the
warning, the errors and the migration table in `docs/ppo.md` (printed by `python -m trl_extras.trainer._ppo_legacy`,
compared with the page by a test) all come from them.

Entry points: `resolve_config` (first thing in `PPOConfig.__post_init__`), `reject_removed_config_fields` (wraps
`PPOConfig.__init__`), `legacy_call` (decorates `PPOTrainer.__init__`) and `LegacyPPOTrainerMixin` (the old
attribute names and `generate_completions`).
"""

from __future__ import annotations

import copy
import functools
import inspect
import warnings
from dataclasses import fields
from typing import Any

import torch
from torch import nn

from .. import _trl_compat

MIGRATION_PAGE = "docs/ppo.md#migrating-from-trls-old-ppotrainer"

# Defaults that TRL <= 1.12's PPOConfig had and ours does not; a legacy run (old arguments or fields) gets these for
# the fields it leaves unset. The current defaults are GRPOConfig's (read from its dataclass fields), or PPO's own
# (`PPO_DEFAULTS`) for the fields GRPOConfig does not have.
OLD_DEFAULTS = {"learning_rate": 3e-6, "temperature": 0.7, "max_completion_length": 53, "lam": 0.95}
# lam: 1.0 learns faster from a fresh critic (docs/ppo.md, "Learning speed against GRPO"); TRL <= 1.12 used 0.95.
PPO_DEFAULTS = {"lam": 1.0}

# TRL <= 1.12 PPOTrainer(...) positional order (TRL 0.12-0.13 named the first, third and fourth `config`, `policy`,
# `ref_policy`; TRL 0.11's PPOv2Trainer also named the second `tokenizer`).
OLD_POSITIONAL_ORDER = (
    "args",
    "processing_class",
    "model",
    "ref_model",
    "reward_model",
    "train_dataset",
    "value_model",
    "data_collator",
    "eval_dataset",
    "optimizers",
    "callbacks",
    "peft_config",
)
RENAMED_ARGUMENTS = {"config": "args", "tokenizer": "processing_class", "policy": "model", "ref_policy": "ref_model"}
OLD_ONLY_ARGUMENTS = ("ref_model", "reward_model", "data_collator")

# ---- the tables (one source for the warning, the errors and docs/ppo.md) -------------------------------------------

# Old constructor argument -> what it becomes.
TRAINER_ARGUMENTS: dict[str, str] = {
    "positional order `args, processing_class, model, ref_model, reward_model, train_dataset, value_model, "
    "data_collator, eval_dataset, optimizers, callbacks, peft_config`": "accepted when the first positional "
    "argument is a config; the current order is `model, reward_funcs, args, ...`",
    "`args` (TRL 0.11-0.13: `config`)": "`args`: a `trl_extras.PPOConfig`, whose old fields are mapped (table below)",
    "`processing_class` (TRL 0.11: `tokenizer`)": "`processing_class`. A pad token the policy has no embedding for "
    '(`add_special_tokens({"pad_token": "[PAD]"})` on a model without spare rows; the old trainer replaced pad ids '
    "by 0 before every forward) is replaced by the EOS token in the trainer's copy of the tokenizer, and the value "
    "model's embeddings are extended to the tokenizer's length (the new rows are never read)",
    "`model` (TRL 0.11-0.13: `policy`)": "`model`: a module or a path (`args.sft_model_path` when omitted)",
    "`ref_model` (TRL 0.11-0.13: `ref_policy`)": "not taken: the reference is a frozen copy of the initial policy "
    "(loaded from `model`'s path), or the policy with its adapter disabled under `peft_config`. A `ref_model` with "
    "the policy's weights is dropped; one with other weights is an error",
    "`reward_model`": "`reward_funcs` (`args.reward_model_path` when omitted); a reward model module gets "
    "`processing_class` as its tokenizer (the old trainer fed it the policy's token ids; here the prompt and "
    "completion text is re-tokenised with that same tokenizer)",
    "`value_model`": "`value_model` (`None`: built as `args.value_model_init` says)",
    "`train_dataset`, `eval_dataset` with tokenised `input_ids`": "decoded into a `prompt` column with "
    "`processing_class` (padding dropped, special tokens kept, the tokenizer's own BOS/EOS not doubled); rows "
    "that do not re-tokenise to the same ids are counted in the warning",
    "`data_collator`": "not needed (the trainer tokenises the prompts): `None` or a `DataCollatorWithPadding` is "
    "dropped, another collator is an error",
    "`optimizers`, `callbacks`, `peft_config`": "same (a custom optimizer must hold the value model's parameters)",
    "`trainer.model.policy`, `trainer.model.value_model`, `trainer.policy_model`, `trainer.reward_model`, "
    "`trainer.stop_token_id`": "kept for reading on the legacy path (`trainer.model` is the policy itself)",
    "`trainer.generate_completions(sampling=False)`": "kept: greedy completions of `eval_dataset` with their "
    "scores, printed as a table and returned as a DataFrame",
}

# Old PPOConfig field -> what it becomes (accepted fields).
CONFIG_FIELDS: dict[str, str] = {
    "`response_length` (old default 53)": "`max_completion_length` (53 when unset on the legacy path, else 512)",
    "`temperature` (0.7), `learning_rate` (3e-6)": "same names; when unset, the old defaults on the legacy path, "
    "else 1.0 and 1e-6",
    "`lam` (0.95)": "same name; when unset, 0.95 on the legacy path, else 1.0 (learns faster from a fresh critic: "
    'docs/ppo.md, "Learning speed against GRPO")',
    '`stop_token="eos"`': "the default: generation stops at the tokenizer's EOS and the model's "
    "`generation_config.eos_token_id`s",
    "`stop_token_id`": "set as the policy's `generation_config.eos_token_id` (generation also stops at the "
    "tokenizer's EOS)",
    "no `stop_token` and no `stop_token_id` (old default: no stop, every completion `response_length` long)": "not "
    "reproduced: generation stops at the EOS (listed in the warning)",
    "`sft_model_path`, `reward_model_path`": "kept for the scripts that read them; the trainer loads them only when "
    "`model` / `reward_model` is not passed",
    "`local_rollout_forward_batch_size`": "accepted, no effect: rollout forwards run in chunks of "
    "`per_device_train_batch_size`",
    "`num_sample_generations`": "`> 0` sets `log_completions=True` (GRPO's completions table at each logging step)",
    '`model_adapter_name` (`None` or `"default"`)': 'the trained adapter is always the one named `"default"`',
    "`dataset_num_proc`": "kept for the scripts that read it; the trainer has no tokenisation pass",
    "`exp_name`": "`run_name`",
    "`num_ppo_epochs`, `num_mini_batches`, `total_episodes`, `kl_coef`, `kl_estimator`, `cliprange`, "
    "`cliprange_value`, `vf_coef`, `gamma`, `whiten_rewards`, `missing_eos_penalty`, "
    "`ds3_gather_for_generation`": "same name, meaning and default",
}

# Old PPOConfig fields that cannot be mapped -> the error's advice. TRL 1.12's derived batch sizes, then TRL <= 0.11's
# PPOConfig (the `step()` API).
_DERIVED = "derived by the trainer from `per_device_train_batch_size`, `gradient_accumulation_steps`, "
REMOVED_CONFIG_FIELDS: dict[str, str] = {
    "world_size": "not settable: the number of processes comes from the launcher (`accelerate launch`)",
    "num_total_batches": "not settable: set `total_episodes` or `max_steps`",
    "micro_batch_size": _DERIVED + "the world size",
    "local_batch_size": _DERIVED + "`num_mini_batches`",
    "batch_size": _DERIVED + "`num_mini_batches` and the world size (a rollout is "
    "`per_device_train_batch_size * gradient_accumulation_steps * num_mini_batches * world_size` episodes)",
    "local_mini_batch_size": _DERIVED + "`num_mini_batches`",
    "mini_batch_size": "a minibatch (one optimizer step) is `per_device_train_batch_size * "
    "gradient_accumulation_steps * world_size` episodes; set those",
    "ref_adapter_name": "not supported: under PEFT the reference is the policy with its adapter disabled "
    "(`peft_config`) or a frozen copy of the `PeftModel`'s own adapter taken at the start; leave it unset",
    "ppo_epochs": "`num_ppo_epochs`",
    "init_kl_coef": "`kl_coef`",
    "adap_kl_ctrl": "set `kl_target` to enable the adaptive KL controller (`kl_horizon` is its horizon)",
    "target": "`kl_target`",
    "horizon": "`kl_horizon`",
    "kl_penalty": '`kl_estimator` ("k1" or "k3")',
    "forward_batch_size": "rollout forwards run in chunks of `per_device_train_batch_size`",
    "backward_batch_size": "`per_device_train_batch_size` and `gradient_accumulation_steps`",
    "global_batch_size": "`per_device_train_batch_size * gradient_accumulation_steps * num_mini_batches`",
    "global_backward_batch_size": "`per_device_train_batch_size * gradient_accumulation_steps`",
    "steps": "`total_episodes` (episodes) or `max_steps` (optimizer steps)",
    "model_name": "pass the policy as `PPOTrainer(model=...)`",
    "query_dataset": "pass the prompts as `train_dataset` (a `prompt` column)",
    "reward_model": "pass it as `PPOTrainer(reward_funcs=...)`",
    "log_with": "`report_to`",
    "tracker_project_name": "`report_to` and the tracker's own environment variables (e.g. `WANDB_PROJECT`)",
    "tracker_kwargs": "`report_to` and the tracker's environment variables",
    "accelerator_kwargs": "`accelerate launch` options or the `TrainingArguments` fields",
    "project_kwargs": "`output_dir` / `logging_dir`",
    "push_to_hub_if_best_kwargs": "`push_to_hub` with `hub_model_id`",
    "task_name": "`run_name`",
    "optimize_cuda_cache": "not needed",
    "optimize_device_cache": "not needed",
    "early_stopping": "not supported: use a `TrainerCallback` that sets `control.should_training_stop`",
    "target_kl": "not supported (early stopping on KL): see `kl_target` for an adaptive penalty instead",
    "compare_steps": "not supported",
    "ratio_threshold": "not supported (the ratio is clipped with `cliprange`)",
    "use_score_scaling": "`whiten_rewards`",
    "use_score_norm": "`whiten_rewards`",
    "score_clip": "clip inside your reward function",
    "is_encoder_decoder": "not supported: decoder-only policies",
    "is_peft_model": "pass `peft_config`, or a `PeftModel` as `model`",
}
# TRL <= 0.11's PPOTrainer(config, model, ref_model, tokenizer, dataset, optimizer, data_collator, num_shared_layers,
# lr_scheduler) and its `step(queries, responses, scores)` loop: a different trainer.
REMOVED_TRAINER_ARGUMENTS = ("dataset", "optimizer", "num_shared_layers", "lr_scheduler", "training_data_collator")


def migration_tables() -> str:
    """The migration tables of `docs/ppo.md`, as markdown (the page embeds this text verbatim)."""

    def table(header, rows):
        lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
        lines += [f"| {old} | {new} |" for old, new in rows]
        return "\n".join(lines)

    removed = [(f"`{name}`", f"error: {advice}") for name, advice in REMOVED_CONFIG_FIELDS.items()]
    return "\n\n".join(
        [
            table(("Old argument or attribute", "New"), TRAINER_ARGUMENTS.items()),
            table(("Old `PPOConfig` field", "New"), list(CONFIG_FIELDS.items()) + removed),
        ]
    )


# ---- PPOConfig ------------------------------------------------------------------------------------------------------


def _current_defaults() -> dict[str, Any]:
    from trl import GRPOConfig

    defaults = {f.name: f.default for f in fields(GRPOConfig)} | PPO_DEFAULTS
    return {name: defaults[name] for name in OLD_DEFAULTS}


def reject_removed_config_fields(init):
    """Wrap `PPOConfig.__init__`: an old field that cannot be mapped is an error naming what to set instead, and
    `exp_name` becomes `run_name` (a plain unknown name keeps Python's TypeError)."""

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        for name in list(kwargs):
            if name in REMOVED_CONFIG_FIELDS and kwargs[name] is not None:
                raise ValueError(
                    f"PPOConfig: `{name}` (a field of TRL's old PPOConfig) is not accepted here. Instead: "
                    f"{REMOVED_CONFIG_FIELDS[name]}. See the migration table in {MIGRATION_PAGE}."
                )
            if name in REMOVED_CONFIG_FIELDS:
                del kwargs[name]
        exp_name = kwargs.pop("exp_name", None)
        if exp_name is not None:
            if kwargs.get("run_name") not in (None, exp_name):
                raise ValueError(
                    f"PPOConfig: `exp_name` ({exp_name!r}) is the old name of `run_name` ({kwargs['run_name']!r}); "
                    "set `run_name` only."
                )
            kwargs["run_name"] = exp_name
        init(self, *args, **kwargs)
        if exp_name is not None:
            self._ppo_legacy_notes.append(f"`exp_name={exp_name!r}` -> `run_name`")
            apply_old_defaults(self)

    return wrapper


def resolve_config(config) -> None:
    """Map a PPOConfig's old fields and resolve the fields whose default depends on them (`OLD_DEFAULTS`).

    Runs first in `PPOConfig.__post_init__`. Records what it mapped in `config._ppo_legacy_notes` (the trainer puts
    them in its warning) and which of `OLD_DEFAULTS` were left unset in `config._ppo_unset_defaults`.
    """
    notes: list[str] = []
    if config.response_length is not None:
        if config.max_completion_length is not None and config.max_completion_length != config.response_length:
            raise ValueError(
                f"PPOConfig: `response_length` ({config.response_length}) is the old name of `max_completion_length` "
                f"({config.max_completion_length}); set `max_completion_length` only."
            )
        config.max_completion_length = config.response_length
        notes.append(f"`response_length={config.response_length}` -> `max_completion_length`")
    if config.stop_token is not None and config.stop_token_id is not None:
        raise ValueError(
            f"PPOConfig: set either `stop_token` ({config.stop_token!r}) or `stop_token_id` ({config.stop_token_id}), "
            "not both (as in TRL's old PPOConfig)."
        )
    if config.stop_token is not None:
        if config.stop_token != "eos":
            raise ValueError(
                f"PPOConfig: `stop_token` must be 'eos' or None, got {config.stop_token!r}. For another stop token set "
                "`stop_token_id` to its id (or the policy's `generation_config.eos_token_id`)."
            )
        notes.append("`stop_token='eos'` -> generation stops at the tokenizer's EOS (the default here)")
    if config.stop_token_id is not None:
        notes.append(f"`stop_token_id={config.stop_token_id}` -> the policy's `generation_config.eos_token_id`")
    for name in ("sft_model_path", "reward_model_path"):
        if getattr(config, name) is not None:
            argument = "model" if name == "sft_model_path" else "reward_model"
            notes.append(f"`{name}` -> kept; the trainer loads it only when `{argument}` is not passed")
    if config.local_rollout_forward_batch_size is not None:
        notes.append(
            f"`local_rollout_forward_batch_size={config.local_rollout_forward_batch_size}` -> no effect: rollout "
            f"forwards run in chunks of `per_device_train_batch_size` ({config.per_device_train_batch_size})"
        )
    if config.num_sample_generations is not None:
        if config.num_sample_generations > 0:
            config.log_completions = True
            notes.append(f"`num_sample_generations={config.num_sample_generations}` -> `log_completions=True`")
        else:
            notes.append("`num_sample_generations=0` -> no completion tables (`log_completions=False`)")
    if config.model_adapter_name not in (None, "default"):
        raise ValueError(
            f"PPOConfig: `model_adapter_name={config.model_adapter_name!r}`: PPOTrainer trains the PEFT adapter named "
            "'default' (as GRPOTrainer does). Load yours under that name, e.g. "
            "`PeftModel.from_pretrained(base, path, adapter_name='default', is_trainable=True)`, and leave "
            "`model_adapter_name` unset."
        )
    if config.model_adapter_name == "default":
        notes.append("`model_adapter_name='default'` -> the trained adapter (always 'default')")
    if config.dataset_num_proc is not None:
        notes.append("`dataset_num_proc` -> kept for the script; the trainer has no tokenisation pass")

    unset = {name for name in OLD_DEFAULTS if getattr(config, name) is None}
    config._ppo_unset_defaults = unset
    config._ppo_legacy_notes = notes
    current = _current_defaults()
    for name in unset:
        setattr(config, name, current[name])
    if notes:
        apply_old_defaults(config)


def apply_old_defaults(config) -> None:
    """Give the fields of `OLD_DEFAULTS` that were left unset their TRL <= 1.12 default (the legacy path)."""
    current = _current_defaults()
    for name in sorted(config._ppo_unset_defaults):
        if getattr(config, name) == current[name]:
            setattr(config, name, OLD_DEFAULTS[name])
            config._ppo_legacy_notes.append(
                f"`{name}` unset -> {OLD_DEFAULTS[name]} (TRL <= 1.12's default; trl_extras' is {current[name]})"
            )


# ---- PPOTrainer -----------------------------------------------------------------------------------------------------


def legacy_call(init):
    """Decorate `PPOTrainer.__init__` so that TRL <= 1.12 calls work: map the old arguments (`TRAINER_ARGUMENTS`),
    emit one FutureWarning listing what was mapped, call the current `__init__`, and keep the old attribute layout
    (`trainer.model.policy`, `trainer.model.value_model`) for reading. New-style calls pass through unchanged."""
    signature = inspect.signature(init)
    var_keyword = next((p.name for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD), None)

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        notes: list[str] = []
        legacy: dict[str, Any] = {}
        from transformers import TrainingArguments

        if args and isinstance(args[0], TrainingArguments):
            if len(args) > len(OLD_POSITIONAL_ORDER):
                raise TypeError(
                    f"PPOTrainer takes at most {len(OLD_POSITIONAL_ORDER)} positional arguments in TRL's old order "
                    f"({', '.join(OLD_POSITIONAL_ORDER)}), got {len(args)}."
                )
            for name, value in zip(OLD_POSITIONAL_ORDER, args):
                if name in kwargs:
                    raise TypeError(f"PPOTrainer got multiple values for argument `{name}`.")
                kwargs[name] = value
            args = ()
            notes.append("TRL's old positional order (args, processing_class, model, ref_model, reward_model, ...)")
        removed = [name for name in REMOVED_TRAINER_ARGUMENTS if name in kwargs]
        if removed:
            raise TypeError(
                f"PPOTrainer got {', '.join(f'`{n}`' for n in removed)}: arguments of TRL <= 0.11's PPOTrainer and its "
                "`step(queries, responses, scores)` loop, which has no equivalent. Write "
                "`PPOTrainer(model=..., reward_funcs=..., args=PPOConfig(...), train_dataset=<prompts>)` and call "
                f"`trainer.train()`; see {MIGRATION_PAGE}."
            )
        for old, new in RENAMED_ARGUMENTS.items():
            if old in kwargs:
                if new in kwargs:
                    raise TypeError(f"PPOTrainer got both `{old}` and `{new}` (its current name); pass `{new}` only.")
                kwargs[new] = kwargs.pop(old)
                notes.append(f"`{old}` -> `{new}`")
        for name in OLD_ONLY_ARGUMENTS:
            if name in kwargs:
                legacy[name] = kwargs.pop(name)
        bound = signature.bind_partial(self, *args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        del arguments["self"]
        arguments.update(arguments.pop(var_keyword, None) or {})  # what `__init__` forwards to GRPOTrainer, by name

        config = arguments.get("args")
        config_notes = list(getattr(config, "_ppo_legacy_notes", []))
        is_legacy = bool(notes or legacy or config_notes or _has_token_prompts(arguments))
        if is_legacy:
            _map_arguments(arguments, legacy, notes)
            if config is not None and hasattr(config, "_ppo_unset_defaults"):
                apply_old_defaults(config)
                config_notes = list(config._ppo_legacy_notes)
            _warn(config_notes + notes)
        init(self, **arguments)
        if is_legacy:
            # TRL <= 1.12's `trainer.model` was a wrapper with `.policy` and `.value_model`; here `trainer.model` is
            # the policy. object.__setattr__ keeps them out of the module tree (no state_dict entries, no recursion).
            object.__setattr__(self.model, "policy", self.model)
            object.__setattr__(self.model, "value_model", self.value_model)

    return wrapper


def _warn(notes: list[str]) -> None:
    listed = "\n".join(f"  - {note}" for note in notes)
    warnings.warn(
        "PPOTrainer: arguments of TRL's old PPOTrainer (TRL <= 1.12) were mapped onto the current ones; this "
        f"compatibility path will be removed in a future release. Mapped:\n{listed}\n"
        f"Migration table: {MIGRATION_PAGE}",
        FutureWarning,
        stacklevel=3,
    )


def _has_token_prompts(arguments) -> bool:
    return any(_is_token_dataset(arguments.get(name)) for name in ("train_dataset", "eval_dataset"))


def _is_token_dataset(dataset) -> bool:
    names = getattr(dataset, "column_names", None)
    return isinstance(names, list) and "input_ids" in names and "prompt" not in names


def _map_arguments(arguments: dict[str, Any], legacy: dict[str, Any], notes: list[str]) -> None:
    """Rewrite `arguments` (the current __init__'s) from the old-only ones in `legacy`, appending to `notes`."""
    from transformers import AutoTokenizer, DataCollatorWithPadding

    config = arguments.get("args")
    model = arguments.get("model")
    if model is None and getattr(config, "sft_model_path", None):
        model = arguments["model"] = config.sft_model_path
        notes.append(f"`model` not passed -> `args.sft_model_path` ({model!r})")
    if model is None:
        raise TypeError("PPOTrainer needs `model` (the policy: a module or a path), or `args.sft_model_path`.")
    if type(model).__name__.endswith("WithValueHead"):
        raise TypeError(
            f"PPOTrainer got a `{type(model).__name__}` (TRL <= 0.11's value-head wrapper): pass the causal LM "
            "(`model.pretrained_model`) as `model`; the value model is separate (`value_model`, a one-label "
            f"sequence classifier, or `None` to build one). See {MIGRATION_PAGE}."
        )

    # Reward
    reward_model = legacy.pop("reward_model", None)
    if reward_model is None and arguments.get("reward_funcs") is None and getattr(config, "reward_model_path", None):
        reward_model = config.reward_model_path
        notes.append(f"`reward_model` not passed -> `args.reward_model_path` ({reward_model!r})")
    if reward_model is not None:
        if arguments.get("reward_funcs") is not None:
            raise TypeError(
                "PPOTrainer got both `reward_model` (its old name) and `reward_funcs`; pass `reward_funcs` only (a "
                "list holds several reward models or functions)."
            )
        arguments["reward_funcs"] = reward_model
        notes.append("`reward_model` -> `reward_funcs`")
    elif arguments.get("reward_funcs") is None:
        raise TypeError(
            "PPOTrainer needs a reward: pass `reward_model=` (old name) or `reward_funcs=` (a reward model, its path, "
            "a reward function, or a list of them)."
        )

    # Data collator
    if "data_collator" in legacy:
        collator = legacy.pop("data_collator")
        if collator is not None and not isinstance(collator, DataCollatorWithPadding):
            raise TypeError(
                f"PPOTrainer got `data_collator={type(collator).__name__}`: the trainer tokenises the prompts itself, "
                "so a custom collator cannot be used. Put per-row processing into the dataset (a `prompt` column) or "
                "into a reward function's keyword arguments (extra dataset columns reach it)."
            )
        if collator is not None:
            notes.append("`data_collator` (DataCollatorWithPadding) -> dropped: the trainer pads the prompts itself")

    # Tokenizer: one the datasets and reward models share, with a pad token inside the policy's embeddings
    tokenizer = arguments.get("processing_class")
    if tokenizer is None and _has_token_prompts(arguments):
        path = model if isinstance(model, str) else model.config._name_or_path
        tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    if tokenizer is not None and isinstance(model, nn.Module):
        tokenizer = _pad_inside_embeddings(tokenizer, model, arguments, notes)
        arguments["processing_class"] = tokenizer
    if (
        isinstance(reward_model, nn.Module)
        and tokenizer is not None
        and arguments.get("reward_processing_classes") is None
    ):
        arguments["reward_processing_classes"] = tokenizer

    # Datasets
    for name in ("train_dataset", "eval_dataset"):
        if _is_token_dataset(arguments.get(name)):
            arguments[name] = _decode_token_prompts(arguments[name], tokenizer, name, notes)

    # Stop token id (stop_token="eos" is the default behaviour)
    stop_token_id = getattr(config, "stop_token_id", None)
    if stop_token_id is not None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                "`args.stop_token_id` sets the policy's `generation_config.eos_token_id`, so it needs `model` as a "
                "module; load it first, or set `eos_token_id` in the model's generation_config.json."
            )
        model.generation_config.eos_token_id = stop_token_id
    elif config is not None and getattr(config, "stop_token", None) is None:
        notes.append(
            "no `stop_token`/`stop_token_id` -> generation stops at the EOS token (TRL <= 1.12 did not stop and "
            "always generated `response_length` tokens)"
        )

    # Reference
    ref_model = legacy.pop("ref_model", None)
    peft = arguments.get("peft_config") is not None or _is_peft(model)
    if ref_model is not None:
        if not isinstance(model, nn.Module) or _is_peft(model):
            raise TypeError(
                "PPOTrainer got `ref_model` with a policy given as a path or a PeftModel: the reference here is always "
                "the initial policy (a frozen copy, or the disabled adapter under PEFT), so leave `ref_model` unset."
            )
        difference = _first_difference(model, ref_model)
        if difference is not None:
            raise ValueError(
                f"PPOTrainer: `ref_model` differs from `model` ({difference}). The reference here is always the "
                "initial policy (a frozen copy of `model`, or the policy with its adapter disabled under "
                "`peft_config`); a different reference is not supported. Start the policy from the reference's "
                "weights, or leave `ref_model` unset."
            )
        notes.append(
            "`ref_model` -> dropped: it has the policy's weights, and the trainer's reference is the initial policy"
        )
    kl_coef = getattr(config, "kl_coef", 0.05)
    if not peft and kl_coef != 0 and isinstance(model, nn.Module):
        from trl.trainer.utils import get_config_model_id

        path = get_config_model_id(model.config)
        if not path:
            raise ValueError(
                "PPOTrainer loads its frozen reference from the policy's path (`model.config._name_or_path`), which "
                "is empty for this in-memory model: save it with `save_pretrained` and load it from there, or pass "
                "`peft_config` (the reference is then the disabled adapter)."
            )
        if ref_model is None:
            notes.append(f"`ref_model=None` -> a frozen copy of the policy, loaded from {path!r}")
    if ref_model is None and peft:
        notes.append(
            "reference under PEFT -> the policy with its adapter disabled (a frozen copy of a PeftModel's adapter)"
        )
    if arguments.get("value_model") is None:
        notes.append("`value_model=None` -> built as `args.value_model_init` says (see docs/ppo.md)")


def _is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def _first_difference(model: nn.Module, other: nn.Module) -> str | None:
    """The first parameter or buffer where two modules differ (name, shape or values), or None."""
    mine, theirs = model.state_dict(), other.state_dict()
    if mine.keys() != theirs.keys():
        extra = sorted(set(mine) ^ set(theirs))
        return f"parameter names differ, e.g. `{extra[0]}`"
    for name, tensor in mine.items():
        if tensor.shape != theirs[name].shape:
            return f"`{name}` has shape {tuple(theirs[name].shape)}, not {tuple(tensor.shape)}"
        if not torch.equal(tensor, theirs[name].to(tensor.device, tensor.dtype)):
            return f"`{name}` has different values"
    return None


def _pad_inside_embeddings(tokenizer, model: nn.Module, arguments: dict[str, Any], notes: list[str]):
    """A pad token id past the policy's embeddings: the old trainer never embedded pad ids (it replaced them by 0), the
    current one does. Use the EOS token as pad in a copy of the tokenizer, and extend the value model's embeddings to
    the tokenizer's length (its new rows are never read: no id past the policy's vocabulary reaches it)."""
    num_embeddings = model.get_input_embeddings().num_embeddings
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id < num_embeddings:
        return tokenizer
    if tokenizer.eos_token_id is None or tokenizer.eos_token_id >= num_embeddings:
        raise ValueError(
            f"The pad token {tokenizer.pad_token!r} (id {tokenizer.pad_token_id}) is outside the policy's "
            f"{num_embeddings} embeddings and there is no EOS token inside them to pad with: resize the policy "
            "(`model.resize_token_embeddings(len(tokenizer))`) or use a pad token the model has."
        )
    old_pad = (tokenizer.pad_token, tokenizer.pad_token_id)
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.pad_token = tokenizer.eos_token
    notes.append(
        f"pad token {old_pad[0]!r} (id {old_pad[1]}) is outside the policy's {num_embeddings} embeddings -> the "
        f"trainer pads with the EOS token {tokenizer.eos_token!r} (TRL <= 1.12 replaced pad ids by 0 before each forward)"
    )
    value_model = arguments.get("value_model")
    if isinstance(value_model, nn.Module) and value_model.get_input_embeddings().num_embeddings < len(tokenizer):
        value_model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        notes.append(f"`value_model` embeddings extended to the tokenizer's {len(tokenizer)} tokens (new rows unused)")
    return tokenizer


def _decode_token_prompts(dataset, tokenizer, name: str, notes: list[str]):
    """Turn a tokenised prompt dataset (`input_ids`, maybe `attention_mask`) into a `prompt` text column."""
    if tokenizer is None:
        raise TypeError(f"`{name}` holds tokenised `input_ids`: pass the `processing_class` they were made with.")
    prefix = tokenizer("", add_special_tokens=True)["input_ids"]  # what the tokenizer adds by itself (e.g. BOS)
    token_columns = [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in dataset.column_names]

    def unpadded(batch) -> list[list[int]]:
        masks = batch["attention_mask"] if "attention_mask" in batch else [None] * len(batch["input_ids"])
        return [
            [int(t) for t, m in zip(ids, mask) if m] if mask is not None else [int(t) for t in ids]
            for ids, mask in zip(batch["input_ids"], masks)
        ]

    def decode(batch):
        rows = [ids[len(prefix) :] if prefix and ids[: len(prefix)] == prefix else ids for ids in unpadded(batch)]
        return {"prompt": tokenizer.batch_decode(rows, skip_special_tokens=False)}

    from datasets import Dataset

    if not isinstance(dataset, Dataset):  # IterableDataset: decoded lazily, not checked
        notes.append(f"`{name}`: tokenised `input_ids` -> decoded into a `prompt` column (lazily)")
        return dataset.map(decode, batched=True, remove_columns=token_columns)

    decoded = dataset.map(decode, batched=True, remove_columns=token_columns)
    reencoded = tokenizer(list(decoded["prompt"]), add_special_tokens=True)["input_ids"]
    originals = unpadded(dataset.select_columns(token_columns)[:])
    mismatched = [i for i, (a, b) in enumerate(zip(reencoded, originals)) if list(a) != b]
    detail = (
        f"; {len(mismatched)} of {len(dataset)} rows re-tokenise to other ids (first: row {mismatched[0]})"
        if mismatched
        else f"; all {len(dataset)} rows re-tokenise to the same ids"
    )
    notes.append(f"`{name}`: tokenised `input_ids` -> decoded into a `prompt` column{detail}")
    return decoded


# ---- the old attribute names ----------------------------------------------------------------------------------------


class LegacyPPOTrainerMixin:
    """TRL <= 1.12 PPOTrainer attributes, read-only, and its `generate_completions`."""

    @property
    def policy_model(self):
        """The policy (TRL <= 1.12's `trainer.policy_model`); the same module as `trainer.model`."""
        return self.model

    @property
    def reward_model(self):
        """The first reward model in `reward_funcs` (TRL <= 1.12's `trainer.reward_model`), or None."""
        return next((f for f in self.reward_funcs if isinstance(f, nn.Module)), None)

    @property
    def stop_token_id(self):
        """`args.stop_token_id`, or the tokenizer's EOS id with `stop_token="eos"` (TRL <= 1.12's attribute)."""
        if getattr(self.args, "stop_token", None) == "eos":
            return _trl_compat.tokenizer(self).eos_token_id
        return getattr(self.args, "stop_token_id", None)

    def generate_completions(self, sampling: bool = False):
        """Greedy completions of `eval_dataset` (the first eval batch with `sampling=True`) and their scores (the
        weighted sum of the reward functions), printed as a table on the main process and returned as a
        `pandas.DataFrame` with columns `query`, `model response`, `score`. TRL <= 1.12 sampled at temperature 0.01,
        i.e. greedily in effect. Every process generates every row. Returns None without an eval dataset."""
        import pandas as pd
        from trl.data_utils import is_conversational

        dataset = self.eval_dataset
        if dataset is None:
            return None
        if isinstance(dataset, dict):
            dataset = next(iter(dataset.values()))
        batch_size = self.args.per_device_eval_batch_size
        rows = [dataset[i] for i in range(min(len(dataset), batch_size) if sampling else len(dataset))]
        model = self.accelerator.unwrap_model(self.model)
        pad_id = _trl_compat.tokenizer(self).pad_token_id
        device = self.accelerator.device
        table = {"query": [], "model response": [], "score": []}
        was_training = model.training
        model.eval()
        try:
            for start in range(0, len(rows), batch_size):
                inputs = rows[start : start + batch_size]
                prompts = [row["prompt"] for row in inputs]
                prompt_ids, _, _ = _trl_compat.tokenize_prompts(self, prompts)
                width = max(len(ids) for ids in prompt_ids)
                ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompt_ids], device=device)
                mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=device)
                with torch.no_grad():
                    output = model.generate(
                        input_ids=ids,
                        attention_mask=mask,
                        max_new_tokens=self.args.max_completion_length,
                        do_sample=False,
                        eos_token_id=self.eos_token_ids,
                        pad_token_id=pad_id,
                    )
                completion_ids = []
                for row in output[:, width:].tolist():
                    end = next((i + 1 for i, t in enumerate(row) if t in self.eos_token_ids), len(row))
                    completion_ids.append(row[:end])
                texts = _trl_compat.tokenizer(self).batch_decode(completion_ids, skip_special_tokens=True)
                if is_conversational({"prompt": prompts[0]}):
                    completions = [[{"role": "assistant", "content": text}] for text in texts]
                    queries = [prompt[-1]["content"] for prompt in prompts]
                else:
                    completions, queries = texts, prompts
                rewards = _trl_compat.calculate_rewards(self, inputs, prompts, completions, completion_ids)
                rewards = rewards[: len(inputs)]
                weights = self.reward_weights.to(rewards.device).unsqueeze(0)
                table["query"].extend(queries)
                table["model response"].extend(texts)
                table["score"].extend((rewards * weights).nansum(dim=1).tolist())
        finally:
            model.train(was_training)
        frame = pd.DataFrame(table)
        if self.accelerator.is_main_process:
            _print_table(frame.head(5))
        return frame


def _print_table(frame) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(frame.to_string())
        return
    table = Table(show_lines=True)
    for column in frame.columns:
        table.add_column(column)
    for row in frame.itertuples(index=False):
        table.add_row(*[str(value) for value in row])
    Console().print(table)


if __name__ == "__main__":
    print(migration_tables())
