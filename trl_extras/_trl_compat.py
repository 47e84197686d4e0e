"""The one place trl-extras touches TRL's private API (underscore names of ``DPOTrainer`` / ``GRPOTrainer``).

Every read, write or call of a private TRL attribute goes through a function here, each with a comment naming
what it relies on; ``tests/test_trl_surface.py`` pins those assumptions against the installed TRL, and
``tests/test_trl_surface.py::test_no_private_trl_names_outside_compat`` fails if another module touches one.

Overriding a private hook (``def _compute_loss``, ``def _calculate_rewards``, ...) and calling the parent's version
of that same hook through ``super()`` is the documented way TRL's own subclasses (``experimental/gmpo``) extend a
trainer: those are listed in ``OVERRIDDEN_HOOKS`` with the signature we rely on, and pinned by the surface test.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# TRL itself is imported inside the functions that need it (and `BaseConfig` / `BaseTrainer` on first use, see the
# module's `__getattr__`): `from trl import GRPOConfig` costs ~3 s and TRL's trainer base ~1 s more, which the CLI's
# launcher process (`resolve_accelerate_config`, before `accelerate launch`) would otherwise pay on every command.
if TYPE_CHECKING:
    from trl import GRPOConfig

# Private hooks of TRL trainers that our trainers override (or whose parent version they call via ``super()``),
# with the parameters we rely on. ``tests/test_trl_surface.py`` checks these against the installed TRL.
OVERRIDDEN_HOOKS: dict[str, dict[str, list[str]]] = {
    "DPOTrainer": {
        # UnlikelihoodTrainer replaces it, MDPOTrainer wraps it; DPOTrainer.compute_loss calls it
        "_compute_loss": ["self", "model", "inputs", "return_outputs"],
        # PreferenceLengthCheck wraps it to count and drop over-long prompts
        "_prepare_dataset": ["self", "dataset", "processing_class", "args", "dataset_name"],
        # CheckpointSafetyMixin and MDPOTrainer write their own state beside DPO's checkpoint
        "_save_checkpoint": ["self", "model", "trial"],
    },
    "GRPOTrainer": {
        # ReMax and PPO post-process the summed rewards; the legacy PPO path calls it directly
        "_calculate_rewards": ["self", "inputs", "prompts", "completions", "completion_ids_list"],
        # ReMax and PPO add their baseline / value estimates to the rollout
        "_generate_and_score_completions": ["self", "inputs"],
        # PPO reshuffles the rollout into minibatches
        "_prepare_inputs": ["self", "generation_batch"],
        # ReMax's greedy rows
        "_generate": ["self", "prompts"],
        "_generate_single_turn": [
            "self",
            "prompt_ids",
            "images",
            "multimodal_fields",
            "num_generations",
            "has_tool_images",
        ],
        # PPO saves and restores its value model and rollout beside GRPO's checkpoint
        "_save_checkpoint": ["self", "model", "trial"],
        "_load_optimizer_and_scheduler": ["self", "checkpoint"],
    },
}

# Private attributes of TRL trainers we read or write, and which trainer sets them in ``__init__``
# (``tests/test_trl_surface.py`` checks each assignment is still in that ``__init__``'s source).
PRIVATE_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "DPOTrainer": ("_metrics", "_total_train_tokens", "_tp_size", "_tokenizer"),
    "GRPOTrainer": (
        "_metrics",
        "_logs",
        "_step",
        "_buffered_inputs",
        "_tokenizer",
        "_is_vlm",
        "_pending_metrics",
        "_pending_extra_logs",
    ),
}

# Private methods of TRL trainers we call (other than the parent's version of a hook we override)
PRIVATE_METHODS: dict[str, dict[str, list[str]]] = {
    "GRPOTrainer": {
        "_calculate_rewards": ["self", "inputs", "prompts", "completions", "completion_ids_list"],
        "_tokenize_prompts": ["self", "prompts"],
        "_get_per_token_logps_and_entropies": ["self", "model", "input_ids", "attention_mask", "logits_to_keep"],
        "_has_mixed_mesh_grads": ["self", "model"],  # transformers' Trainer, reached through GRPOTrainer
        "_log_completion_extra": ["self", "column", "values"],
    },
}


# ---------------------------------------------------------------------------------------------------------- metrics
def metrics(trainer) -> dict:
    """``trainer._metrics``: ``{"train"|"eval": defaultdict(list)}``; DPO's and GRPO's ``log`` average each list and
    clear it, so appending a float under a new name logs it beside TRL's metrics."""
    return trainer._metrics


def set_metrics(trainer, value: dict) -> None:
    """Replace ``trainer._metrics`` (ReMax swaps it around its greedy pass so that pass logs nothing of its own)."""
    trainer._metrics = value


def add_train_tokens(trainer, num_tokens: int) -> int:
    """Add a gathered token count to DPO's running ``_total_train_tokens`` (divided by ``_tp_size``, as DPO does:
    tensor-parallel ranks see the same batch) and return the new total, which DPO logs as ``num_tokens``."""
    trainer._total_train_tokens += num_tokens // trainer._tp_size
    return trainer._total_train_tokens


def total_train_tokens(trainer) -> int:
    """DPO's running ``_total_train_tokens`` (what it logs as ``num_tokens``)."""
    return trainer._total_train_tokens


def completion_logs(trainer) -> dict:
    """``trainer._logs``: GRPO's per-completion table (``"prompt"``, ``"completion"``, ``"advantages"``, ...), deques
    of the last completions, printed / sent to trackers when ``log_completions`` is on."""
    return trainer._logs


def pending_logs(trainer) -> tuple[Any, Any]:
    """``(_pending_extra_logs, _pending_metrics)``: what GRPO's ``_calculate_rewards`` stages for the next log."""
    return trainer._pending_extra_logs, trainer._pending_metrics


def set_pending_logs(trainer, extra_logs, pending_metrics) -> None:
    """Replace GRPO's staged ``_pending_extra_logs`` / ``_pending_metrics`` (ReMax isolates its greedy rewards)."""
    trainer._pending_extra_logs, trainer._pending_metrics = extra_logs, pending_metrics


def log_completion_extra(trainer, column: str, values) -> None:
    """GRPO's ``_log_completion_extra(column, values)``: an extra column in the completions table."""
    trainer._log_completion_extra(column, values)


# --------------------------------------------------------------------------------------------------- tokenizer, VLM
def tokenizer(trainer):
    """``trainer._tokenizer``: the text tokenizer DPO / GRPO take from ``processing_class`` (a processor's
    ``.tokenizer`` for vision-language models), with the pad token they set."""
    return trainer._tokenizer


def is_vlm(trainer) -> bool:
    """``trainer._is_vlm``: GRPO's flag, True when ``processing_class`` is a ``ProcessorMixin``."""
    return trainer._is_vlm


# ------------------------------------------------------------------------------------------- GRPO's rollout buffer
def step(trainer) -> int:
    """``trainer._step``: GRPO's count of ``_prepare_inputs`` calls in training; a new rollout is generated when
    ``_step % (steps_per_generation * num_iterations) == 0``."""
    return trainer._step


def set_step(trainer, value: int) -> None:
    trainer._step = value


def buffered_inputs(trainer):
    """``trainer._buffered_inputs``: GRPO's list of ``steps_per_generation`` micro-batches of the current rollout,
    ``_buffered_inputs[_step % steps_per_generation]`` being the next one; ``None`` before the first rollout."""
    return trainer._buffered_inputs


def set_buffered_inputs(trainer, value) -> None:
    trainer._buffered_inputs = value


# ----------------------------------------------------------------------------------------- GRPO methods we call
def calculate_rewards(trainer, inputs, prompts, completions, completion_ids_list):
    """GRPO's ``_calculate_rewards``: ``(B, num_reward_funcs)`` rewards of this process' rows, gathered over
    processes (NaN where a function returned None); it also stages per-function reward metrics."""
    return trainer._calculate_rewards(inputs, prompts, completions, completion_ids_list)


def tokenize_prompts(trainer, prompts):
    """GRPO's ``_tokenize_prompts(prompts)`` -> ``(prompt_ids, images, multimodal_fields)``, the chat template and
    truncation applied as for generation."""
    return trainer._tokenize_prompts(prompts)


def per_token_logps_and_entropies(trainer, model, input_ids, attention_mask, logits_to_keep, **kwargs):
    """GRPO's ``_get_per_token_logps_and_entropies``: ``(logps (B, logits_to_keep), entropies or None, aux_loss)``
    at the sampling temperature, with the multimodal inputs passed as keywords."""
    return trainer._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep, **kwargs)


def has_mixed_mesh_grads(trainer, model) -> bool:
    """``Trainer._has_mixed_mesh_grads(model)`` (transformers', inherited by GRPO): True when gradient clipping must go
    through the parent's DTensor-aware path."""
    return trainer._has_mixed_mesh_grads(model)


# ---------------------------------------------------------------------------- checks and loads we go around
class _NoReferenceModelSentinel:
    """The ``ref_model`` a reference-free ``DPOTrainer`` subclass passes up: "there is none; do not load one"."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_REFERENCE_MODEL"


NO_REFERENCE_MODEL = _NoReferenceModelSentinel()


class NoReferenceModel:
    """``ref_model`` of a ``DPOTrainer`` subclass that has no reference model: a class attribute that always reads
    ``None`` and accepts only ``None`` or ``NO_REFERENCE_MODEL``.

    Use: ``ref_model = NoReferenceModel()`` on the class, ``super().__init__(model, NO_REFERENCE_MODEL, args, ...)``.
    This goes through ``DPOTrainer``'s public ``ref_model`` argument and attribute only. Relies on (pinned by
    ``tests/test_trl_surface.py::test_dpo_given_ref_model_is_stored_not_loaded``): in ``DPOTrainer.__init__`` a
    given ``ref_model`` is only compared (``is model``, ``is None``) and stored as ``self.ref_model``; the reference
    copy is loaded (``create_model_from_path``) and a PEFT model's pretrained adapter copied into a frozen ``"ref"``
    adapter only when it is ``None``; every later use (dropout, fused head, DeepSpeed / FSDP / accelerate
    preparation, the sync callback) reads ``self.ref_model``, which reads ``None`` here, so the parent's own
    ``is not None`` checks skip them. ``DPOTrainer`` has no "no reference" switch: its ways to drop one
    (``precompute_ref_log_probs``, a PEFT policy) still run a reference forward. If TRL ever stores something else
    there, the setter raises instead of letting a reference model in.
    """

    def __get__(self, trainer, owner=None):
        return self if trainer is None else None

    def __set__(self, trainer, value) -> None:
        if value is not None and value is not NO_REFERENCE_MODEL:
            raise RuntimeError(
                f"{type(trainer).__name__} has no reference model, but its `ref_model` was set to a "
                f"{type(value).__name__}. If DPOTrainer.__init__ did it, TRL's DPOTrainer changed how it handles a "
                "given `ref_model`; see `NoReferenceModel` in trl_extras/_trl_compat.py."
            )


class _OneGenerationPerPrompt(int):
    """The integer 1, let through ``GRPOConfig``'s ``num_generations < 2`` check and no other comparison."""

    def __lt__(self, other):
        return False if other == 2 else int(self) < other


def grpo_post_init_one_generation(config: GRPOConfig) -> None:
    """Run ``GRPOConfig.__post_init__`` on ``config`` with ``num_generations == 1``.

    Relies on: ``GRPOConfig.__post_init__`` compares ``num_generations`` only through ``% num_generations`` (1
    divides everything) and the single ``self.num_generations < 2`` check, which raises with no switch to turn it off;
    ``GRPOTrainer.__init__`` does not repeat it. The check sits in the middle of ``__post_init__`` (batch-size
    derivations before, vLLM checks after), so it cannot be skipped without copying the method: the parent runs with
    a 1 that passes that single comparison, then gets a plain int back. The surface test fails if TRL writes the
    check another way (``<= 1``, ``== 1``).

    No honest value does it: any integer that passes ``< 2`` must also divide ``generation_batch_size``, which is 1
    for one process with batch 1; running the method on scaled-up batch sizes and scaling back misreports them in its
    own error messages; catching the error skips the vLLM importance-sampling checks after it. The fix belongs in
    TRL: the check reading a class attribute (``GRPOConfig._min_num_generations = 2``) that ``ReMaxConfig`` and
    ``PPOConfig`` would set to 1.
    """
    from trl import GRPOConfig

    config.num_generations = _OneGenerationPerPrompt(1)
    try:
        GRPOConfig.__post_init__(config)
    finally:
        config.num_generations = 1


# ===================================================================================== Diffusion-DPO (h-diffstruct)
# `DiffusionDPOTrainer` / `DiffusionDPOConfig` are built on TRL's shared bases, as every TRL trainer is
# (``DPOTrainer(_BaseTrainer)``, ``DPOConfig(_BaseConfig)``), so that TRL's defaults and model card follow TRL.
# Relies on (pinned by tests/test_trl_surface.py::test_diffusion_dpo_bases):
# - ``BaseTrainer`` (``trl.trainer.base_trainer._BaseTrainer``) subclasses ``transformers.Trainer``; its
#   ``__init__(*args, **kwargs)`` forwards everything to ``Trainer.__init__`` and then calls ``self._send_telemetry()``;
#   it adds ``create_model_card(model_name, dataset_name, tags)``, which writes ``<output_dir>/README.md`` from the
#   class attributes ``_tag_names``, ``_name``, ``_paper`` (``title``, ``id``, ``citation``) and ``_template_file``.
#   That card is all we use it for; ``loss_is_scaled_for_ga`` is transformers' own attribute since 5.19.
# - ``BaseConfig`` (``trl.trainer.base_config._BaseConfig``) subclasses ``TrainingArguments`` with TRL's defaults
#   ``logging_steps=10``, ``gradient_checkpointing=True`` and ``bf16=None``, made ``not fp16`` by ``__post_init__``.


def __getattr__(name: str) -> Any:
    """``BaseConfig`` and ``BaseTrainer``, imported from TRL on first use (see the imports at the top)."""
    if name == "BaseConfig":
        from trl.trainer.base_config import _BaseConfig as BaseConfig

        return BaseConfig
    if name == "BaseTrainer":
        from trl.trainer.base_trainer import _BaseTrainer as BaseTrainer

        return BaseTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# The CLI's `reward` command: RewardPairLengthCheck counts the long pairs RewardTrainer would drop silently
OVERRIDDEN_HOOKS["RewardTrainer"] = {
    "_prepare_dataset": ["self", "dataset", "processing_class", "args", "dataset_name"],
}

OVERRIDDEN_HOOKS["BaseTrainer"] = {
    # TRL's usage ping reads ``self.model.config.model_type``, which diffusers models lack: DiffusionDPOTrainer's sends
    # nothing (it counts TRL's own trainers only)
    "_send_telemetry": ["self"],
    # transformers' hook (DPO and GRPO override it too), through `set_signature_columns`: the columns the trainer keeps
    "_set_signature_columns_if_needed": ["self"],
}


def set_signature_columns(trainer, columns: list[str]) -> None:
    """Set transformers' ``Trainer._signature_columns`` (the dataset columns ``_remove_unused_columns`` keeps) unless
    already set, as DPO's and GRPO's ``_set_signature_columns_if_needed`` do. Relies on: ``Trainer.__init__`` sets it
    to ``None`` and ``_remove_unused_columns`` calls ``_set_signature_columns_if_needed()`` before reading it."""
    if trainer._signature_columns is None:
        trainer._signature_columns = list(columns)


# ------------------------------------------------------------------------------- CLI (trl_extras/cli.py, scripts/)
# What `trl-extras` borrows from TRL's own command line. `scripts/_common.py` also subclasses the public `TrlParser`,
# overriding argparse's `error` and `parse_known_args` (checks run there): that relies on
# `TrlParser.parse_args_and_config` -> `HfArgumentParser.parse_args_into_dataclasses` -> `self.parse_known_args`,
# and on `HfArgumentParser.dataclass_types` keeping the dataclasses in the order given (pinned by
# `tests/test_trl_surface.py::test_trl_parser_parses_through_parse_known_args`).
def resolve_accelerate_config(launch_args: list[str]) -> list[str]:
    """``launch_args`` with ``--accelerate_config X`` replaced by ``--config_file PATH``, as ``trl dpo`` does.

    Relies on: ``trl.cli.accelerate_config.resolve_accelerate_config_argument(launch_args)``, a module of TRL's CLI
    that neither ``trl`` nor ``trl.cli`` exports: ``X`` is a file, or the name of a config shipped in
    ``trl/accelerate_configs/`` (``zero2``, ``fsdp2``, ...) without ``.yaml``; arguments without
    ``--accelerate_config`` come back unchanged; anything else raises ``ValueError`` with TRL's message.
    """
    from trl.cli.accelerate_config import resolve_accelerate_config_argument

    return resolve_accelerate_config_argument(launch_args)
