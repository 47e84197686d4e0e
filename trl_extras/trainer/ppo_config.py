"""Configuration for :class:`~trl_extras.trainer.ppo_trainer.PPOTrainer`."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from typing import Any

from trl import GRPOConfig

from .._distributed import check_process_group
from ..losses.ppo import KL_ESTIMATORS
from ..validation import check_config
from . import _ppo_legacy
from ._grpo_config import grpo_post_init

VALUE_MODEL_INITS = ("reward_model", "policy")
VALUE_HEAD_INITS = ("zero", "normal")


@dataclass
class PPOConfig(GRPOConfig):
    r"""
    Configuration class for [`PPOTrainer`].

    Inherits every parameter of [`~trl.GRPOConfig`] (generation, vLLM, reward weights, logging); only the fields below
    are added or have a different default. PPO field names follow TRL's former `PPOConfig`, so old configs port (see
    `docs/ppo.md` for the argument-by-argument table).

    Batch sizes, as in the old trainer: a rollout batch holds `per_device_train_batch_size * gradient_accumulation_steps
    * num_mini_batches * world_size` episodes (one completion per prompt by default). Each rollout is optimised for
    `num_ppo_epochs` passes, each split into `num_mini_batches` minibatches, one optimizer step per minibatch. GRPO's
    `steps_per_generation` and `num_iterations` are derived from these and must not be set.

    Parameters:
        > PPO

        num_ppo_epochs (`int`, *optional*, defaults to `4`):
            Optimisation passes over each rollout batch (GRPO's `num_iterations`).
        num_mini_batches (`int`, *optional*, defaults to `1`):
            Minibatches (optimizer steps) per pass over a rollout batch.
        total_episodes (`int`, *optional*):
            Completions to sample in total; sets `max_steps`. `None` trains for `num_train_epochs` over the dataset.
        kl_coef (`float`, *optional*, defaults to `0.05`):
            KL penalty coefficient `beta` in the per-token reward `-beta * KL_t`; the initial value when `kl_target`
            is set.
        kl_estimator (`str`, *optional*, defaults to `"k1"`):
            Per-token KL estimator in the reward: `"k1"` (`log pi - log pi_ref`) or `"k3"`
            (`(pi_ref/pi - 1) - log(pi_ref/pi)`).
        kl_target (`float`, *optional*):
            Target mean sequence KL for the adaptive KL controller (Ziegler et al. 2019); `None` keeps `kl_coef` fixed.
        kl_horizon (`float`, *optional*, defaults to `10000`):
            Horizon, in episodes, of the adaptive KL controller.
        cliprange (`float`, *optional*, defaults to `0.2`):
            PPO clip range of the policy ratio.
        cliprange_value (`float`, *optional*, defaults to `0.2`):
            Clip range of the value prediction around its rollout-time value.
        vf_coef (`float`, *optional*, defaults to `0.1`):
            Weight of the value loss.
        gamma (`float`, *optional*, defaults to `1.0`):
            Discount factor.
        lam (`float`, *optional*, defaults to `1.0`):
            GAE lambda. 1.0 (as verl) passes the score to every token undiscounted; the classic 0.95 (TRL's former
            default) leans on the critic, which learns slower than the policy from a fresh start (`docs/ppo.md`).
        whiten_rewards (`bool`, *optional*, defaults to `False`):
            Scale the per-token rewards by their standard deviation over the batch before GAE.
        whiten_advantages (`bool`, *optional*, defaults to `True`):
            Whiten the advantages over the batch's tokens (the classic implementation always does).
        missing_eos_penalty (`float`, *optional*):
            Subtracted from the score of completions that end without an EOS token.
        value_model_init (`str`, *optional*):
            Where the default value model comes from when the trainer gets no `value_model`: `"reward_model"` (the
            first reward model in `reward_funcs`, as the classic recipe does) or `"policy"` (the policy's backbone
            with a new scalar head). `None` picks `"reward_model"` when there is one, else `"policy"`.
        value_model_init_kwargs (`dict`, *optional*):
            Keyword arguments for `AutoModelForSequenceClassification.from_pretrained` when the value model is loaded
            from a path (`dtype` defaults to `float32`).
        value_head_init (`str`, *optional*, defaults to `"zero"`):
            How a new value head (a critic built from the policy or from a causal LM) starts: `"zero"` (every value
            0 at first, so the first advantages are the whitened returns) or `"normal"` (transformers' random init,
            seeded by `seed`). A head loaded from a checkpoint (a reward model, a trained critic) is kept.
        value_learning_rate (`float`, *optional*):
            Learning rate of the value model (its parameter groups follow the same schedule); `None` uses
            `learning_rate`.
        critic_warmup_rollouts (`int`, *optional*, defaults to `0`):
            Rollouts at the start during which only the value model trains (the policy loss is off), as verl's
            `critic_warmup` and OpenRLHF's `freezing_actor_steps`. They count towards `max_steps`.

        > Changed defaults

        num_generations (`int`, *optional*, defaults to `1`):
            Completions per prompt. PPO's baseline is the value model, so one is enough; more are allowed.
        disable_dropout (`bool`, *optional*, defaults to `True`):
            Dropout off in the policy and value model, so the rollout-time log-probs and values match the first
            optimisation pass exactly.
        beta (`float`, *optional*):
            Set from `kl_coef`; do not set it. GRPO uses it to decide whether to compute reference log-probs; PPO puts
            the KL in the reward and never in the loss.
        num_iterations (`int`, *optional*):
            Set from `num_ppo_epochs`; do not set it.
        learning_rate, temperature, max_completion_length:
            GRPOConfig's defaults (1e-6, 1.0, 512), or TRL <= 1.12's PPO defaults (3e-6, 0.7, 53) on the legacy path
            (an old field below is set, or the trainer is called the old way). `None` (the declared default) means
            unset.

        > TRL <= 1.12 fields

        response_length, stop_token, stop_token_id, sft_model_path, reward_model_path,
        local_rollout_forward_batch_size, num_sample_generations, model_adapter_name, ref_adapter_name,
        dataset_num_proc, exp_name:
            Accepted so that old configs and scripts run; what each maps to is in `docs/ppo.md` ("Migrating from
            TRL's old PPOTrainer") and `trl_extras.trainer._ppo_legacy`. Setting one makes the run a legacy run.
    """

    _VALID_DICT_FIELDS = GRPOConfig._VALID_DICT_FIELDS + ["value_model_init_kwargs"]

    # PPO
    num_ppo_epochs: int = field(default=4, metadata={"help": "Optimisation passes over each rollout batch."})
    num_mini_batches: int = field(
        default=1, metadata={"help": "Minibatches (optimizer steps) per pass over a rollout batch."}
    )
    total_episodes: int | None = field(
        default=None,
        metadata={"help": "Completions to sample in total; sets max_steps. None: num_train_epochs over the dataset."},
    )
    kl_coef: float = field(
        default=0.05,
        metadata={"help": "KL penalty coefficient beta in the per-token reward; initial value if kl_target is set."},
    )
    kl_estimator: str = field(default="k1", metadata={"help": "Per-token KL estimator in the reward: 'k1' or 'k3'."})
    kl_target: float | None = field(
        default=None,
        metadata={"help": "Target mean sequence KL of the adaptive KL controller; None keeps kl_coef fixed."},
    )
    kl_horizon: float = field(default=10000.0, metadata={"help": "Horizon (episodes) of the adaptive KL controller."})
    cliprange: float = field(default=0.2, metadata={"help": "PPO clip range of the policy ratio."})
    cliprange_value: float = field(
        default=0.2, metadata={"help": "Clip range of the value prediction around its rollout-time value."}
    )
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss."})
    gamma: float = field(default=1.0, metadata={"help": "Discount factor."})
    lam: float | None = field(
        default=None, metadata={"help": "GAE lambda. Unset: 1.0 (0.95, TRL <= 1.12's, on the legacy path)."}
    )
    whiten_rewards: bool = field(
        default=False, metadata={"help": "Scale the per-token rewards by their batch standard deviation before GAE."}
    )
    whiten_advantages: bool = field(default=True, metadata={"help": "Whiten the advantages over the batch's tokens."})
    missing_eos_penalty: float | None = field(
        default=None, metadata={"help": "Subtracted from the score of completions that end without an EOS token."}
    )
    value_model_init: str | None = field(
        default=None,
        metadata={
            "help": "Default value model when none is passed: 'reward_model' or 'policy'. None: 'reward_model' when "
            "reward_funcs has a model, else 'policy'."
        },
    )
    value_model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "Keyword arguments for from_pretrained when the value model is loaded from a path."},
    )
    value_head_init: str = field(
        default="zero", metadata={"help": "A new value head starts at 'zero' or 'normal' (random, seeded)."}
    )
    value_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the value model; None: learning_rate."}
    )
    critic_warmup_rollouts: int = field(
        default=0, metadata={"help": "Rollouts at the start during which only the value model trains."}
    )

    # Changed defaults
    num_generations: int | None = field(
        default=1, metadata={"help": "Completions per prompt. PPO's baseline is the value model; one is enough."}
    )
    disable_dropout: bool = field(
        default=True, metadata={"help": "Dropout off in the policy and value model (rollout values stay exact)."}
    )
    beta: float | None = field(
        default=None, metadata={"help": "Set from kl_coef; do not set. PPO's KL is in the reward, not the loss."}
    )
    num_iterations: int | None = field(default=None, metadata={"help": "Set from num_ppo_epochs; do not set."})
    # None = unset: GRPOConfig's default, or TRL <= 1.12's on the legacy path (_ppo_legacy.OLD_DEFAULTS)
    learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate. Unset: 1e-6 (3e-6, TRL <= 1.12's, on the legacy path)."}
    )
    temperature: float | None = field(
        default=None, metadata={"help": "Sampling temperature. Unset: 1.0 (0.7 on the legacy path)."}
    )
    max_completion_length: int | None = field(
        default=None, metadata={"help": "Maximum completion length. Unset: 512 (53 on the legacy path)."}
    )

    # TRL <= 1.12 fields (docs/ppo.md, "Migrating from TRL's old PPOTrainer")
    response_length: int | None = field(
        default=None, metadata={"help": "TRL <= 1.12: the old name of max_completion_length (default there 53)."}
    )
    stop_token: str | None = field(
        default=None, metadata={"help": "TRL <= 1.12: 'eos' stops at the tokenizer's EOS (always the case here)."}
    )
    stop_token_id: int | None = field(
        default=None, metadata={"help": "TRL <= 1.12: a stop token id, set as the policy's generation eos_token_id."}
    )
    sft_model_path: str | None = field(
        default=None, metadata={"help": "TRL <= 1.12: the policy's path; used when the trainer gets no model."}
    )
    reward_model_path: str | None = field(
        default=None, metadata={"help": "TRL <= 1.12: the reward model's path; used when the trainer gets no reward."}
    )
    local_rollout_forward_batch_size: int | None = field(
        default=None,
        metadata={"help": "TRL <= 1.12, no effect: rollout forwards run in chunks of per_device_train_batch_size."},
    )
    num_sample_generations: int | None = field(
        default=None, metadata={"help": "TRL <= 1.12: > 0 sets log_completions=True."}
    )
    model_adapter_name: str | None = field(
        default=None, metadata={"help": "TRL <= 1.12: only None or 'default' (the adapter PPOTrainer trains)."}
    )
    ref_adapter_name: str | None = field(
        default=None, metadata={"help": "TRL <= 1.12: not supported (an error when set)."}
    )
    dataset_num_proc: int | None = field(
        default=None, metadata={"help": "TRL <= 1.12: kept for scripts that read it; the trainer does not tokenise."}
    )

    def __post_init__(self):
        _ppo_legacy.resolve_config(self)  # old fields, and the defaults that depend on them
        check_config(self)  # field values no trainer can use (kl_coef < 0, lengths, batch sizes)
        self._validate_ppo_fields()
        if isinstance(self.value_model_init_kwargs, str):
            self.value_model_init_kwargs = json.loads(self.value_model_init_kwargs)

        # GRPO's knobs that PPO derives
        if self.steps_per_generation is not None or self.generation_batch_size is not None:
            raise ValueError(
                "PPOConfig derives `steps_per_generation` and `generation_batch_size` from `num_mini_batches` and "
                "`gradient_accumulation_steps`; leave them unset and set `num_mini_batches` instead."
            )
        if self.num_iterations is not None and self.num_iterations != self.num_ppo_epochs:
            raise ValueError(
                f"`num_iterations` ({self.num_iterations}) is GRPO's name for `num_ppo_epochs` "
                f"({self.num_ppo_epochs}); set `num_ppo_epochs` only."
            )
        if self.beta is not None and self.beta != self.kl_coef:
            raise ValueError(
                f"`beta` ({self.beta}) is GRPO's in-loss KL coefficient; PPO puts the KL penalty in the reward with "
                f"`kl_coef` ({self.kl_coef}). Set `kl_coef` only."
            )
        self.num_iterations = self.num_ppo_epochs
        self.steps_per_generation = self.gradient_accumulation_steps * self.num_mini_batches
        # Reference log-probs are needed exactly when the KL penalty is on (an adaptive coefficient starting at 0
        # stays at 0). GRPO builds the reference model and computes its log-probs iff `beta != 0`; PPOTrainer
        # replaces GRPO's loss, so `beta` never enters a loss.
        self.beta = self.kl_coef

        grpo_post_init(self)  # GRPOConfig's checks, with one completion per prompt allowed (the classic setting)
        check_process_group(self)  # several launched processes must form one group

        optimizer_steps_per_rollout = self.num_ppo_epochs * self.num_mini_batches
        if self.total_episodes is not None:
            if self.max_steps > 0:
                raise ValueError(
                    f"Set either `total_episodes` ({self.total_episodes}) or `max_steps` ({self.max_steps}), not both."
                )
            rollouts = math.ceil(self.total_episodes / self.generation_batch_size)
            self.max_steps = rollouts * optimizer_steps_per_rollout

    def _validate_ppo_fields(self) -> None:
        def positive_int(name):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")

        positive_int("num_ppo_epochs")
        positive_int("num_mini_batches")
        positive_int("num_generations")
        if self.total_episodes is not None:
            positive_int("total_episodes")
        if self.kl_coef < 0:
            raise ValueError(f"`kl_coef` must be >= 0, got {self.kl_coef}.")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"`kl_estimator` must be one of {KL_ESTIMATORS}, got {self.kl_estimator!r}.")
        if self.kl_target is not None and self.kl_target <= 0:
            raise ValueError(f"`kl_target` must be > 0 (or None for a fixed `kl_coef`), got {self.kl_target}.")
        if self.kl_target is not None and self.kl_coef == 0:
            raise ValueError("`kl_target` adapts `kl_coef` multiplicatively, so `kl_coef` must start above 0.")
        if self.kl_horizon <= 0:
            raise ValueError(f"`kl_horizon` must be > 0, got {self.kl_horizon}.")
        for name in ("cliprange", "cliprange_value"):
            if getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be > 0, got {getattr(self, name)}.")
        if self.vf_coef < 0:
            raise ValueError(f"`vf_coef` must be >= 0, got {self.vf_coef}.")
        for name in ("gamma", "lam"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"`{name}` must be in [0, 1], got {getattr(self, name)}.")
        if self.missing_eos_penalty is not None and self.missing_eos_penalty < 0:
            raise ValueError(
                f"`missing_eos_penalty` is subtracted from the score, so it must be >= 0, got {self.missing_eos_penalty}."
            )
        if self.value_head_init not in VALUE_HEAD_INITS:
            raise ValueError(f"`value_head_init` must be one of {VALUE_HEAD_INITS}, got {self.value_head_init!r}.")
        if self.value_learning_rate is not None and not self.value_learning_rate > 0:
            raise ValueError(f"`value_learning_rate` must be > 0 (or None), got {self.value_learning_rate}.")
        if isinstance(self.critic_warmup_rollouts, bool) or not (
            isinstance(self.critic_warmup_rollouts, int) and self.critic_warmup_rollouts >= 0
        ):
            raise ValueError(f"`critic_warmup_rollouts` must be an integer >= 0, got {self.critic_warmup_rollouts!r}.")
        if self.value_model_init is not None and self.value_model_init not in VALUE_MODEL_INITS:
            raise ValueError(
                f"`value_model_init` must be one of {VALUE_MODEL_INITS} or None, got {self.value_model_init!r}."
            )


PPOConfig.__init__ = _ppo_legacy.reject_removed_config_fields(PPOConfig.__init__)


# GRPO loss knobs that PPOTrainer's loss does not read: setting them is an error rather than a silent no-op.
_GRPO_LOSS_FIELDS = (
    "loss_type",
    "epsilon",
    "epsilon_high",
    "delta",
    "importance_sampling_level",
    "scale_rewards",
    "multi_objective_aggregation",
    "top_entropy_quantile",
    "entropy_coef",
    "use_adaptive_entropy",
    "off_policy_mask_threshold",
    "use_bias_correction_kl",
)


def check_grpo_loss_fields(args: PPOConfig) -> None:
    """PPOTrainer replaces GRPO's loss: a GRPO loss field set away from its default is an error, not a no-op."""
    defaults = {f.name: f.default for f in fields(GRPOConfig)}
    for name in _GRPO_LOSS_FIELDS:
        if getattr(args, name) != defaults[name]:
            raise ValueError(
                f"`{name}` ({getattr(args, name)!r}) configures GRPO's loss, which PPOTrainer replaces with the PPO "
                "loss; leave it at its default. PPO's own knobs are `cliprange`, `cliprange_value`, `vf_coef`, "
                "`kl_coef`, `gamma` and `lam`."
            )
