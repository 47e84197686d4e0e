"""PPO for RLHF on TRL 1.x: an actor-critic subclass of :class:`trl.GRPOTrainer`."""

from __future__ import annotations

import contextlib
import itertools
import textwrap

import torch
from torch import nn
from trl import GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import shuffle_sequence_dict, split_tensor_dict

from .. import _trl_compat
from ..checkpointing import CheckpointSafetyMixin
from ..data import validate_prompt_dataset
from ..losses.ppo import (
    KLController,
    gae_advantages_and_returns,
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
from ._ppo_checkpoint import PPOCheckpointMixin
from ._ppo_metrics import log_loss_metrics, log_rollout_metrics
from .ppo_config import PPOConfig
from .ppo_config import check_grpo_loss_fields as _check_grpo_loss_fields
from .value_model import (
    PerTokenValueModel,
    PolicyAndValueWrapper,
    ZeroGradAfterStep,
    add_value_param_groups,
    build_value_model,
    check_value_model,
)


class PPOTrainer(PPOCheckpointMixin, CheckpointSafetyMixin, _ppo_legacy.LegacyPPOTrainerMixin, GRPOTrainer):
    r"""
    Trainer for RLHF with [Proximal Policy Optimization](https://arxiv.org/abs/1707.06347) as in [Ziegler et al.
    2019](https://arxiv.org/abs/1909.08593) and [Huang et al. 2024](https://arxiv.org/abs/2403.17031): a policy, a
    critic (`value_model`), a KL penalty against the reference policy in the reward, GAE advantages and clipped policy
    and value losses (the objective: `trl_extras.losses.ppo`; the hooks, engines and migration: docs/ppo.md). It takes
    [`~trl.GRPOTrainer`]'s arguments with a [`PPOConfig`], plus `value_model`: a path to, or an instance of, a
    one-label `AutoModelForSequenceClassification` sharing the policy's tokenizer, or `None` to build one as
    `args.value_model_init` says; it trains with the policy's optimizer and is saved under `value_model/`. Calls
    written for TRL <= 1.12's PPOTrainer are mapped by `_ppo_legacy`, with one FutureWarning.

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

    Overrides: `_generate_and_score_completions`, `_calculate_rewards`, `_prepare_inputs`, `_compute_loss`,
    `create_optimizer`, `_clip_grad_norm`, `_prepare_for_training`; from `PPOCheckpointMixin`: `_save`,
    `_save_checkpoint`, `_load_from_checkpoint`, `_load_optimizer_and_scheduler`, `_save_rng_state`, `_load_rng_state`.
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
        self.value_model = build_value_model(value_model, model, reward_funcs, args)  # a new head: seeded, zeroed

        super().__init__(model, reward_funcs, args=args, **kwargs)
        keep_4bit_training_exact(self.model)  # bitsandbytes' CPU repack off, TRL's bf16 adapter cast undone
        if _trl_compat.is_vlm(self):
            raise NotImplementedError("PPOTrainer supports text-only policies: its value model reads token ids only.")

        check_value_model(  # vocabulary, embeddings, trainable parameters; dropout and checkpointing as the policy
            self.value_model, value_model, reward_funcs, args, _trl_compat.tokenizer(self),
            self.reward_processing_classes, self.reward_func_names,
        )  # fmt: skip
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            # The engine shards and syncs the module it prepares: give it policy and critic as one module
            # (`_prepare_for_training`), called through its root for both heads (`_per_token_values`)
            self._policy_and_value = PolicyAndValueWrapper(self.model, self.value_model)
        else:
            self._policy_and_value = None
            # The critic trains with the policy's optimizer; under DDP its own wrapper keeps its gradients in sync
            self._value_module = self.accelerator.prepare_model(PerTokenValueModel(self.value_model))
            # The Trainer zeroes only the policy's gradients after each optimizer step; do the same for the critic
            self.add_callback(ZeroGradAfterStep(self.value_model))

        self.kl_ctl = KLController(value=args.kl_coef, target=args.kl_target, horizon=args.kl_horizon)

    def _per_token_values(self, input_ids, attention_mask, logits_to_keep, batch_size=None) -> torch.Tensor:
        with self.accelerator.autocast():
            if self._policy_and_value is None:
                return self._value_module(input_ids, attention_mask, logits_to_keep, batch_size)
            # DeepSpeed / FSDP: through the engine's root module, which gathers the critic's shards
            engine = self.model_wrapped
            if self.accelerator.unwrap_model(engine) is not self._policy_and_value:  # not prepared yet
                engine = self._policy_and_value
            return engine(input_ids, attention_mask, logits_to_keep, batch_size, head="value")

    def _prepare_for_training(self, max_steps, train_dataloader, resume_from_checkpoint):
        # DeepSpeed / FSDP: the engine prepares (and, under FSDP, becomes) `self.model`; make that policy and critic
        # together, so that one engine shards, syncs, clips and checkpoints both
        if self._policy_and_value is not None and self.model is not self._policy_and_value:
            self.model = self.model_wrapped = self._policy_and_value
        return super()._prepare_for_training(max_steps, train_dataloader, resume_from_checkpoint)

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

        # Metrics, as the old TRL PPOTrainer logged them (`objective/*`, `val/num_eos_tokens`)
        seq_kl = log_rollout_metrics(self, mode, scores, kl, non_score_rewards, old_logps, mask, has_eos, kl_coef)
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
        # The parent splits each rollout into minibatches once and replays them for every epoch; PPO reshuffles at
        # each epoch, as the classic implementation does: re-split the stored rollout when an epoch starts
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
        # The loss is a token mean over the optimizer step's tokens (every micro-batch of the accumulation window, on
        # every process), counted here: 2 processes x 4 rows = 1 x 8 rows, and gradient accumulation = the full batch
        if self.model.training:
            ga = self.args.gradient_accumulation_steps
            start = _trl_compat.step(self) % steps_per_rollout // ga * ga
            local = sum(batch["ppo_mask"].sum() for batch in _trl_compat.buffered_inputs(self)[start : start + ga])
        else:
            local = inputs["ppo_mask"].sum()
        return {**inputs, "ppo_num_tokens": self.accelerator.reduce(local.float(), reduction="sum")}

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
                self, model, input_ids, attention_mask, logits_to_keep,
                compute_entropy=True, compute_aux_loss=self.aux_loss_enabled,
            )  # fmt: skip
        self.value_model.train(mode == "train")
        values = self._per_token_values(input_ids, attention_mask, logits_to_keep)  # (B, T)

        old_logps, args = inputs["old_per_token_logps"], self.args
        policy_loss, policy_clipped, ratio = ppo_policy_loss(logps, old_logps, inputs["advantages"], args.cliprange)
        if "importance_sampling_ratio" in inputs:  # vLLM sampler-vs-trainer correction, as in GRPO
            policy_loss = policy_loss * inputs["importance_sampling_ratio"]
        value_loss, value_clipped = ppo_value_loss(values, inputs["values"], inputs["returns"], args.cliprange_value)
        # Token mean over the optimizer step (every micro-batch of the window on every process, counted in
        # `_prepare_inputs`); data parallelism averages the gradients over processes, hence the `num_processes`.
        num_tokens = inputs["ppo_num_tokens"].clamp(min=1.0) / self.accelerator.num_processes
        per_token_loss = args.vf_coef * value_loss if warmup else policy_loss + args.vf_coef * value_loss
        loss = (per_token_loss * mask).sum() / num_tokens
        normalizer = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * aux_loss / normalizer
        log_loss_metrics(
            self, mode, mask, logps, old_logps, entropies, ratio,
            (policy_loss, value_loss), (policy_clipped, value_clipped), aux_loss,
        )  # fmt: skip
        return loss

    def create_optimizer(self, model=None):
        given = self.optimizer is not None
        if self._policy_and_value is not None and (model is None or model is self._policy_and_value):
            model = self._policy_and_value.policy  # the parent's groups over the policy; the critic's added below
        optimizer = super().create_optimizer(model)
        decay = set(self.get_decay_parameter_names(self.value_model))
        add_value_param_groups(optimizer, self.value_model, decay, self.args, given)  # own weight-decay groups
        return optimizer

    def _clip_grad_norm(self, model):
        # Policy and critic form one optimisation problem: clip their joint gradient norm
        if self._policy_and_value is not None or _trl_compat.has_mixed_mesh_grads(self, model):
            return super()._clip_grad_norm(model)
        params = itertools.chain(model.parameters(), self.value_model.parameters())
        return self.accelerator.clip_grad_norm_(params, self.args.max_grad_norm)
