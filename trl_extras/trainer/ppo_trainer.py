"""PPO for RLHF on TRL 1.x: an actor-critic subclass of :class:`trl.GRPOTrainer`."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import textwrap
from dataclasses import fields

import torch
from torch import nn
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging
from trl import GRPOConfig, GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import disable_dropout_in_model, shuffle_sequence_dict, split_tensor_dict

from .. import _trl_compat
from ..checkpointing import CheckpointSafetyMixin
from ..data import validate_prompt_dataset
from ..losses.ppo import (
    KLController,
    gae_advantages_and_returns,
    masked_mean,
    masked_moments,
    masked_whiten,
    per_token_kl,
    per_token_rewards,
    ppo_policy_loss,
    ppo_value_loss,
)
from ..quantization import keep_4bit_training_exact
from ..rewards import check_finite_rewards, check_reward_funcs
from . import _ppo_legacy, _rollout
from ._init import resolve_args, validate_datasets
from .ppo_config import PPOConfig
from .value_model import (
    PerTokenValueModel,
    PolicyAndValueWrapper,
    build_value_model,
    check_value_model_vocabulary,
    has_new_value_head,
    load_value_weights,
    zero_value_head,
)

logger = logging.get_logger(__name__)

VALUE_MODEL_DIR = "value_model"
PPO_STATE_NAME = "ppo_state.json"
ROLLOUT_NAME = "ppo_rollout_{}.pt"  # per process: the rollout being optimised, for a resume mid-rollout

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


class PPOTrainer(CheckpointSafetyMixin, _ppo_legacy.LegacyPPOTrainerMixin, GRPOTrainer):
    r"""
    Trainer for RLHF with Proximal Policy Optimization: a policy, a value model (critic), a KL penalty against the
    reference policy in the reward, GAE advantages and clipped policy and value losses.

    Papers: [Proximal Policy Optimization Algorithms](https://arxiv.org/abs/1707.06347) (Schulman et al. 2017), as
    used for RLHF in [Fine-Tuning Language Models from Human Preferences](https://arxiv.org/abs/1909.08593) (Ziegler
    et al. 2019) and [Training language models to follow instructions with human
    feedback](https://arxiv.org/abs/2203.02155) (Ouyang et al. 2022), with the details of [The N Implementation
    Details of RLHF with PPO](https://arxiv.org/abs/2403.17031) (Huang et al. 2024). Per episode (prompt `x`,
    completion `y_1..y_T`), with `KL_t = log pi_old(y_t|s_t) - log pi_ref(y_t|s_t)`:

        r_t      = -kl_coef * KL_t + [t == T] * score(x, y)
        A_t      = GAE(gamma, lam) of r_t with the critic's V(s_t); R_t = A_t + V(s_t); A whitened
        L^pi     = mean_t max(-A_t * rho_t, -A_t * clip(rho_t, 1 - cliprange, 1 + cliprange)),  rho_t = pi/pi_old
        L^V      = mean_t 1/2 max((V_t - R_t)^2, (clip(V_t, V_old - cliprange_value, V_old + cliprange_value) - R_t)^2)
        loss     = L^pi + vf_coef * L^V

    The maths lives in `trl_extras.losses.ppo`.

    Example:

    ```python
    from datasets import Dataset
    from trl_extras import PPOConfig, PPOTrainer

    dataset = Dataset.from_list([{"prompt": "The movie was"}] * 64)
    trainer = PPOTrainer(
        model="path/to/sft-model",
        reward_funcs="path/to/reward-model",  # or a Python reward function, as with GRPOTrainer
        args=PPOConfig(output_dir="ppo-out", per_device_train_batch_size=8, num_ppo_epochs=4),
        train_dataset=dataset,
    )
    trainer.train()
    trainer.save_model()  # writes the policy, and the critic to <output_dir>/value_model
    ```

    Everything GRPOTrainer takes works the same (reward functions and reward models, `reward_weights`, vLLM,
    `peft_config`, standard or conversational prompt-only datasets), plus:

    Args:
        value_model (`str`, [`~transformers.PreTrainedModel`] or [`~peft.PeftModel`], *optional*):
            The critic: a path to, or an instance of, a one-label `AutoModelForSequenceClassification` of a decoder
            that shares the policy's tokenizer; its `score` head is read at every position. `None` builds one as
            `args.value_model_init` says (from the first reward model, or from the policy with a new head). It is
            trained by the trainer's optimizer, saved with every checkpoint and by `save_model` under
            `value_model/`, and reloaded on resume.

    How it sits on GRPOTrainer (hooks overridden, each calling the parent):

    - `_generate_and_score_completions`: the parent samples, scores and computes the old and reference log-probs;
      this adds the critic's values, the per-token rewards, GAE advantages and returns, and updates the KL
      controller.
    - `_calculate_rewards`: keeps the parent's raw rewards (GRPO turns them into group advantages, PPO does not) and
      stops on a non-finite one, naming the reward and the row.
    - `_compute_loss`: the PPO policy and value losses, replacing GRPO's loss (GRPO's `beta` never enters it).
    - `_prepare_inputs`: reshuffles the rollout into new minibatches at each PPO epoch, then defers to the parent's
      buffering (`num_iterations = num_ppo_epochs`, `steps_per_generation = gradient_accumulation_steps *
      num_mini_batches`).
    - `create_optimizer` and `_clip_grad_norm`: the critic's parameters join the optimizer and the gradient clipping.
    - `_prepare_for_training`: under DeepSpeed or FSDP, the engine gets policy and critic as one module
      (`PolicyAndValueWrapper`), which is `trainer.model` from then on (docs/ppo.md, "Engines").
    - `_save`, `_save_checkpoint`, `_load_from_checkpoint`, `_load_optimizer_and_scheduler`: the critic's weights and
      the KL controller are saved and restored with the policy.
    - `_save_rng_state`, `_load_rng_state`: each process's rollout in progress is saved beside its RNG state, so a
      checkpoint taken between PPO epochs resumes into the same rollout.

    Under PEFT/QLoRA the reference policy is the policy with its adapter disabled (no second copy), as in GRPO.
    Text-only policies. DDP, DeepSpeed ZeRO-2/3 and FSDP2 (see docs/ppo.md, "Engines").

    Calls written for TRL's old PPOTrainer (TRL <= 1.12: `PPOTrainer(args, processing_class, model, ref_model,
    reward_model, train_dataset, value_model, ...)`, tokenised `input_ids` datasets, `trainer.model.policy`) are mapped
    by `trl_extras.trainer._ppo_legacy`, with one FutureWarning; see docs/ppo.md.
    """

    _tag_names = ["trl", "trl-extras", "ppo"]
    _name = "PPO"
    _paper = {
        "title": "Proximal Policy Optimization Algorithms",
        "id": "1707.06347",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @article{schulman2017proximal,
                title        = {{Proximal Policy Optimization Algorithms}},
                author       = {John Schulman and Filip Wolski and Prafulla Dhariwal and Alec Radford and Oleg Klimov},
                year         = 2017,
                eprint       = {arXiv:1707.06347},
            }"""),
    }

    @_ppo_legacy.legacy_call  # TRL <= 1.12 arguments -> these (docs/ppo.md, "Migrating from TRL's old PPOTrainer")
    def __init__(self, model, reward_funcs=None, args=None, *, value_model: str | nn.Module | None = None, **kwargs):
        args = resolve_args(args, PPOConfig, model, "PPOTrainer", "PPO")
        _check_grpo_loss_fields(args)
        kwargs["train_dataset"], kwargs["eval_dataset"] = validate_datasets(
            validate_prompt_dataset, kwargs.get("train_dataset"), kwargs.get("eval_dataset")
        )
        reward_funcs = check_reward_funcs(reward_funcs)  # non-finite or non-numeric rewards name the function and row
        # Seeded, so that a new value head is the same in every run and every process (the Trainer seeds only later)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            self.value_model = build_value_model(value_model, model, reward_funcs, args)
        if args.value_head_init == "zero" and has_new_value_head(self.value_model):
            zero_value_head(self.value_model)

        super().__init__(model, reward_funcs, args=args, **kwargs)
        keep_4bit_training_exact(self.model)  # bitsandbytes' CPU repack off, TRL's bf16 adapter cast undone
        if _trl_compat.is_vlm(self):
            raise NotImplementedError("PPOTrainer supports text-only policies: its value model reads token ids only.")

        check_value_model_vocabulary(
            value_model,
            reward_funcs,
            args,
            _trl_compat.tokenizer(self),
            self.reward_processing_classes,
            self.reward_func_names,
        )
        num_embeddings = self.value_model.get_input_embeddings().num_embeddings
        if num_embeddings < len(_trl_compat.tokenizer(self)):
            raise ValueError(
                f"The value model has {num_embeddings} token embeddings but the policy's tokenizer has "
                f"{len(_trl_compat.tokenizer(self))} tokens: the value model reads the policy's token ids, so it must "
                "share its tokenizer."
            )
        if not any(p.requires_grad for p in self.value_model.parameters()):
            raise ValueError("The value model has no trainable parameters (every `requires_grad` is False).")
        if args.disable_dropout:
            disable_dropout_in_model(self.value_model)
        if args.gradient_checkpointing and getattr(self.value_model, "supports_gradient_checkpointing", False):
            self.value_model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs or {"use_reentrant": False}
            )
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            # The engine shards and syncs the module it prepares: give it policy and critic as one module
            # (`_prepare_for_training`), called through its root for both heads (`_per_token_values`)
            self._policy_and_value = PolicyAndValueWrapper(self.model, self.value_model)
        else:
            self._policy_and_value = None
            # The critic trains with the policy's optimizer; under DDP its own wrapper keeps its gradients in sync
            self._value_module = self.accelerator.prepare_model(PerTokenValueModel(self.value_model))
            # The Trainer zeroes only the policy's gradients after each optimizer step; do the same for the critic
            self.add_callback(_ZeroGradAfterStep(self.value_model))

        self.kl_ctl = KLController(value=args.kl_coef, target=args.kl_target, horizon=args.kl_horizon)

    # ---- value model --------------------------------------------------------------------------------------------

    def _per_token_values(self, input_ids, attention_mask, logits_to_keep, batch_size=None) -> torch.Tensor:
        with self.accelerator.autocast():
            if self._policy_and_value is None:
                return self._value_module(input_ids, attention_mask, logits_to_keep, batch_size)
            # DeepSpeed / FSDP: through the engine's root module, which gathers the critic's shards
            engine = self.model_wrapped
            if self.accelerator.unwrap_model(engine) is not self._policy_and_value:  # not prepared yet
                engine = self._policy_and_value
            return engine(input_ids, attention_mask, logits_to_keep, batch_size, head="value")

    # ---- engines ------------------------------------------------------------------------------------------------

    def _prepare_for_training(self, max_steps, train_dataloader, resume_from_checkpoint):
        # DeepSpeed / FSDP: the engine prepares (and, under FSDP, becomes) `self.model`; make that policy and critic
        # together, so that one engine shards, syncs, clips and checkpoints both
        if self._policy_and_value is not None and self.model is not self._policy_and_value:
            self.model = self.model_wrapped = self._policy_and_value
        return super()._prepare_for_training(max_steps, train_dataloader, resume_from_checkpoint)

    # ---- rollout ------------------------------------------------------------------------------------------------

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)  # (N, K)
        # A non-finite score stops here, naming the reward and the row (it would make every parameter NaN)
        check_finite_rewards(
            rewards_per_func, self.reward_funcs, self.reward_func_names, prompts, completions,
            self.accelerator.num_processes, self.accelerator.process_index,
        )  # fmt: skip
        _rollout.record(self).rewards_per_func = rewards_per_func  # the parent folds it into group advantages
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        record = _rollout.begin(self)  # filled by `_calculate_rewards` inside the parent's call
        output = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        device = self.accelerator.device
        args = self.args

        completion_ids, completion_mask = output["completion_ids"], output["completion_mask"]
        input_ids = torch.cat([output["prompt_ids"], completion_ids], dim=1)  # (B, P + T)
        attention_mask = torch.cat([output["prompt_mask"], completion_mask], dim=1)  # (B, P + T)
        logits_to_keep = completion_ids.size(1)  # T
        batch_size = args.per_device_train_batch_size if mode == "train" else args.per_device_eval_batch_size

        with torch.no_grad(), disable_gradient_checkpointing(self.model, args.gradient_checkpointing_kwargs):
            if output.get("old_per_token_logps") is None:
                # GRPO skips this forward when its loss can use the live log-probs; PPO needs them for the KL reward
                output["old_per_token_logps"], _, _ = _trl_compat.per_token_logps_and_entropies(
                    self, self.model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size
                )
            self.value_model.train(mode == "train")
            values = self._per_token_values(input_ids, attention_mask, logits_to_keep, batch_size)  # (B, T)
        old_logps = output["old_per_token_logps"]  # (B, T)

        # Sequence scores: the weighted sum of the reward functions, this process's rows
        rewards_per_func = record.consume("rewards_per_func", reader="PPOTrainer._generate_and_score_completions")
        n_local = completion_ids.size(0)
        rows = slice(self.accelerator.process_index * n_local, (self.accelerator.process_index + 1) * n_local)
        weighted = rewards_per_func * self.reward_weights.to(rewards_per_func.device).unsqueeze(0)
        scores = weighted.nansum(dim=1)[rows].to(device)  # (B,)
        scorable = ~torch.isnan(rewards_per_func).all(dim=1)[rows].to(device)  # (B,)

        lengths = completion_mask.sum(dim=1)  # (B,)
        last_tokens = completion_ids.gather(1, (lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1)  # (B,)
        has_eos = torch.isin(last_tokens, torch.tensor(self.eos_token_ids, device=device)) & (lengths > 0)
        if args.missing_eos_penalty is not None:
            scores = scores - args.missing_eos_penalty * (~has_eos).float()

        mask = completion_mask if "tool_mask" not in output else completion_mask * output["tool_mask"]  # (B, T)
        loss_mask = mask * scorable.unsqueeze(1)  # unscorable rows (every reward func returned None) do not train
        kl_coef = self.kl_ctl.value
        if output.get("ref_per_token_logps") is not None:
            kl = per_token_kl(old_logps, output["ref_per_token_logps"], args.kl_estimator) * mask  # (B, T)
        else:  # kl_coef == 0: no reference model
            kl = torch.zeros_like(old_logps)
        rewards, non_score_rewards = per_token_rewards(scores, kl, completion_mask, kl_coef)  # (B, T) each
        # Whitening statistics span every process's tokens: the rollout batch is one batch however it is split
        if args.whiten_rewards:
            rewards = masked_whiten(rewards, completion_mask, False, **self._global_moments(rewards, completion_mask))
        values = values * completion_mask
        advantages, returns = gae_advantages_and_returns(rewards, values, completion_mask, args.gamma, args.lam)
        if args.whiten_advantages:
            advantages = masked_whiten(advantages, loss_mask, **self._global_moments(advantages, loss_mask))

        output.update(advantages=advantages, returns=returns, values=values, ppo_mask=loss_mask)

        # Metrics, as the old TRL PPOTrainer logged them: sums over each completion's tokens, means over completions
        gather = self.accelerator.gather
        seq_kl = gather((kl * mask).sum(dim=1))
        seq_non_score = gather(non_score_rewards.sum(dim=1))
        all_scores = gather(scores)
        metrics = _trl_compat.metrics(self)[mode]
        metrics["objective/kl"].append(seq_kl.mean().item())
        metrics["objective/entropy"].append(gather((-old_logps * mask).sum(dim=1)).mean().item())
        metrics["objective/non_score_reward"].append(seq_non_score.mean().item())
        metrics["objective/scores"].append(all_scores.mean().item())
        metrics["objective/rlhf_reward"].append((all_scores + seq_non_score).mean().item())
        metrics["objective/kl_coef"].append(kl_coef)
        metrics["val/num_eos_tokens"].append(gather(has_eos.float()).sum().item())

        if mode == "train":
            self.kl_ctl.update(seq_kl.mean().item(), n_episodes=seq_kl.numel())
            record.batch = output  # kept for the PPO epochs of this rollout (`_prepare_inputs`) and for checkpoints
        else:
            _rollout.end(self, reader="PPOTrainer._generate_and_score_completions")
        return output

    def _global_moments(self, x, mask) -> dict[str, torch.Tensor]:
        """Mean and unbiased variance of `x` over the masked positions of every process (`masked_moments`)."""
        return masked_moments(x, mask, lambda t: self.accelerator.reduce(t, reduction="sum"))

    def _prepare_inputs(self, generation_batch):
        # The parent splits each rollout into minibatches once and replays them for every epoch. PPO reshuffles at
        # each epoch, as the classic implementation does: re-split the stored rollout when an epoch (not a rollout)
        # starts.
        steps_per_rollout = self.args.steps_per_generation
        if (
            self.model.training
            and _trl_compat.buffered_inputs(self) is not None
            and steps_per_rollout > 1
            and _trl_compat.step(self) % steps_per_rollout == 0
            and _trl_compat.step(self) % (steps_per_rollout * self.num_iterations) != 0
        ):
            rollout = _rollout.require(self, "batch", reader="PPOTrainer._prepare_inputs")
            _trl_compat.set_buffered_inputs(self, split_tensor_dict(shuffle_sequence_dict(rollout), steps_per_rollout))
        inputs = super()._prepare_inputs(generation_batch)
        # The loss is a token mean over the optimizer step's tokens: every micro-batch of the accumulation window,
        # on every process. Count them here, once per micro-batch, so that 2 processes x 4 rows = 1 x 8 rows and
        # gradient accumulation = the full batch.
        if self.model.training:
            ga = self.args.gradient_accumulation_steps
            start = _trl_compat.step(self) % steps_per_rollout // ga * ga
            local = sum(batch["ppo_mask"].sum() for batch in _trl_compat.buffered_inputs(self)[start : start + ga])
        else:
            local = inputs["ppo_mask"].sum()
        return {**inputs, "ppo_num_tokens": self.accelerator.reduce(local.float(), reduction="sum")}

    # ---- loss ---------------------------------------------------------------------------------------------------

    def _compute_loss(self, model, inputs):
        mode = "train" if self.model.training else "eval"
        completion_ids = inputs["completion_ids"]
        input_ids = torch.cat([inputs["prompt_ids"], completion_ids], dim=1)  # (B, P + T)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        logits_to_keep = completion_ids.size(1)
        mask = inputs["ppo_mask"]  # (B, T)

        # Critic warm-up: during the first `critic_warmup_rollouts` rollouts only the value loss trains
        steps_per_rollout = self.args.num_ppo_epochs * self.args.num_mini_batches
        warmup = mode == "train" and self.state.global_step // steps_per_rollout < self.args.critic_warmup_rollouts
        with torch.no_grad() if warmup else contextlib.nullcontext():
            logps, entropies, aux_loss = _trl_compat.per_token_logps_and_entropies(
                self,
                model,
                input_ids,
                attention_mask,
                logits_to_keep,
                compute_entropy=True,
                compute_aux_loss=self.aux_loss_enabled,
            )
        self.value_model.train(mode == "train")
        values = self._per_token_values(input_ids, attention_mask, logits_to_keep)  # (B, T)

        old_logps = inputs["old_per_token_logps"]
        policy_loss, policy_clipped, ratio = ppo_policy_loss(
            logps, old_logps, inputs["advantages"], self.args.cliprange
        )
        if "importance_sampling_ratio" in inputs:  # vLLM sampler-vs-trainer correction, as in GRPO
            policy_loss = policy_loss * inputs["importance_sampling_ratio"]
        value_loss, value_clipped = ppo_value_loss(
            values, inputs["values"], inputs["returns"], self.args.cliprange_value
        )
        pg_loss = masked_mean(policy_loss, mask, dim=None)  # this micro-batch's means, for the logs
        vf_loss = masked_mean(value_loss, mask, dim=None)
        # Token mean over the optimizer step (every micro-batch of the window on every process, counted in
        # `_prepare_inputs`); data parallelism averages the gradients over processes, hence the `num_processes`.
        num_tokens = inputs["ppo_num_tokens"].clamp(min=1.0) / self.accelerator.num_processes
        per_token_loss = self.args.vf_coef * value_loss if warmup else policy_loss + self.args.vf_coef * value_loss
        loss = (per_token_loss * mask).sum() / num_tokens
        normalizer = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * aux_loss / normalizer

        def global_mean(x):  # masked mean over every process's tokens
            totals = self.accelerator.reduce(torch.stack([(x * mask).sum(), mask.sum().float()]), reduction="sum")
            return (totals[0] / totals[1].clamp(min=1.0)).item()

        with torch.no_grad():
            log_ratio = logps - old_logps
            ratio_mean = global_mean(ratio)
            metrics = _trl_compat.metrics(self)[mode]
            metrics["policy/approxkl_avg"].append(global_mean(0.5 * log_ratio**2))
            metrics["policy/clipfrac_avg"].append(global_mean(policy_clipped.float()))
            metrics["policy/entropy_avg"].append(global_mean(entropies))
            metrics["loss/policy_avg"].append(self.accelerator.gather(pg_loss.detach()).mean().item())
            metrics["loss/value_avg"].append(self.accelerator.gather(vf_loss.detach()).mean().item())
            metrics["val/clipfrac_avg"].append(global_mean(value_clipped.float()))
            metrics["val/ratio"].append(ratio_mean)
            metrics["val/ratio_var"].append(global_mean((ratio - ratio_mean) ** 2))
            if self.aux_loss_enabled:
                metrics["aux_loss"].append(self.accelerator.gather(aux_loss.detach()).mean().item())
        return loss

    # ---- optimizer ----------------------------------------------------------------------------------------------

    def create_optimizer(self, model=None):
        given = self.optimizer is not None
        if self._policy_and_value is not None and (model is None or model is self._policy_and_value):
            model = self._policy_and_value.policy  # the parent's groups over the policy; the critic's added below
        optimizer = super().create_optimizer(model)
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        named = [(n, p) for n, p in self.value_model.named_parameters() if p.requires_grad and id(p) not in held]
        if named and given:
            raise ValueError(
                "The optimizer passed in `optimizers` does not hold the value model's trainable parameters; build it "
                "over `list(model.parameters()) + list(value_model.parameters())`, or let the trainer create it."
            )
        decay = set(self.get_decay_parameter_names(self.value_model))
        lr = {} if self.args.value_learning_rate is None else {"lr": self.args.value_learning_rate}
        for weight_decay, params in (
            (self.args.weight_decay, [p for n, p in named if n in decay]),
            (0.0, [p for n, p in named if n not in decay]),
        ):
            if params:
                optimizer.add_param_group({"params": params, "weight_decay": weight_decay, **lr})
        return optimizer

    def _clip_grad_norm(self, model):
        # Policy and critic form one optimisation problem: clip their joint gradient norm
        if self._policy_and_value is not None or _trl_compat.has_mixed_mesh_grads(self, model):
            return super()._clip_grad_norm(model)
        params = itertools.chain(model.parameters(), self.value_model.parameters())
        return self.accelerator.clip_grad_norm_(params, self.args.max_grad_norm)

    # ---- saving and resuming ------------------------------------------------------------------------------------

    def _save(self, output_dir: str | None = None, state_dict=None):
        value_state_dict = None
        if self.model is self._policy_and_value:
            # DeepSpeed / FSDP: `save_model` gathered the engine's module; the policy is saved as without an engine
            if state_dict is None:
                state_dict = self.model.state_dict()
            state_dict, value_state_dict = self._policy_and_value.split_state_dict(state_dict)
            self.model = self._policy_and_value.policy
            try:
                super()._save(output_dir, state_dict)
            finally:
                self.model = self._policy_and_value
            if not value_state_dict:  # ZeRO-3 without 16-bit gathering: the engine's own checkpoint holds it
                return
        else:
            super()._save(output_dir, state_dict)
        if self.args.should_save:
            value_dir = os.path.join(output_dir or self.args.output_dir, VALUE_MODEL_DIR)
            self.accelerator.unwrap_model(self.value_model).save_pretrained(value_dir, state_dict=value_state_dict)
            self.processing_class.save_pretrained(value_dir)

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            checkpoint_dir = os.path.join(
                self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            with open(os.path.join(checkpoint_dir, PPO_STATE_NAME), "w") as f:
                json.dump({"kl_coef": self.kl_ctl.value}, f)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self._policy_and_value is not None:
            return  # DeepSpeed / FSDP: the engine's checkpoint (policy and critic as one module) was loaded
        value_dir = os.path.join(resume_from_checkpoint, VALUE_MODEL_DIR)
        if not os.path.isdir(value_dir):
            raise FileNotFoundError(
                f"The checkpoint {resume_from_checkpoint} has no `{VALUE_MODEL_DIR}/`: it was not written by "
                "PPOTrainer, and resuming without the value model would not continue the same run."
            )
        load_value_weights(self.accelerator.unwrap_model(self.value_model), value_dir)

    def _save_rng_state(self, output_dir: str) -> None:
        # Every process saves its RNG state here; it saves its rollout beside it. A checkpoint between two PPO epochs
        # (or minibatches) of a rollout resumes with the same rollout, in the same minibatches, at the same step.
        super()._save_rng_state(output_dir)
        mid_rollout = _trl_compat.step(self) % (self.args.steps_per_generation * self.num_iterations) != 0
        rollout = _rollout.get(self, "PPOTrainer._save_rng_state", mode="train") if mid_rollout else None
        state = {
            "step": _trl_compat.step(self),
            "rollout": rollout.state_dict() if rollout is not None else None,
            "buffered_inputs": _trl_compat.buffered_inputs(self) if mid_rollout else None,
        }
        torch.save(state, os.path.join(output_dir, ROLLOUT_NAME.format(self.accelerator.process_index)))

    def _load_rng_state(self, checkpoint: str | None) -> None:
        super()._load_rng_state(checkpoint)
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, ROLLOUT_NAME.format(self.accelerator.process_index))
        if not os.path.isfile(path):
            steps = self.state.global_step * self.args.gradient_accumulation_steps
            if steps % (self.args.steps_per_generation * self.num_iterations) != 0:
                logger.warning(
                    f"{checkpoint} was taken in the middle of a rollout but holds no `{os.path.basename(path)}` "
                    "(an older trl-extras wrote it): the resumed run samples a new rollout instead of finishing the "
                    "interrupted one, so it will not match an uninterrupted run."
                )
            return
        state = torch.load(path, map_location=self.accelerator.device, weights_only=True)
        _trl_compat.set_step(self, state["step"])
        if state["rollout"] is not None:
            _rollout.put(self, "train", _rollout.Rollout.from_state_dict(state["rollout"]))
            _trl_compat.set_buffered_inputs(self, state["buffered_inputs"])

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None and os.path.exists(os.path.join(checkpoint, PPO_STATE_NAME)):
            with open(os.path.join(checkpoint, PPO_STATE_NAME)) as f:
                self.kl_ctl.value = json.load(f)["kl_coef"]


class _ZeroGradAfterStep(TrainerCallback):
    """Zero a module's gradients where the Trainer zeroes the policy's: after every optimizer step."""

    def __init__(self, module: nn.Module):
        self.module = module

    def on_step_end(self, args, state, control, **kwargs):
        self.module.zero_grad(set_to_none=True)


def _check_grpo_loss_fields(args: PPOConfig) -> None:
    defaults = {f.name: f.default for f in fields(GRPOConfig)}
    for name in _GRPO_LOSS_FIELDS:
        if getattr(args, name) != defaults[name]:
            raise ValueError(
                f"`{name}` ({getattr(args, name)!r}) configures GRPO's loss, which PPOTrainer replaces with the PPO "
                "loss; leave it at its default. PPO's own knobs are `cliprange`, `cliprange_value`, `vf_coef`, "
                "`kl_coef`, `gamma` and `lam`."
            )
