"""What :class:`~trl_extras.PPOTrainer` saves beside GRPO's checkpoint and restores on resume: the critic
(`value_model/`), the KL controller (`ppo_state.json`) and each process's rollout in progress (`ppo_rollout_<i>.pt`,
beside its RNG state), so that a resumed run continues the same run, also from between two PPO epochs of a rollout
(docs/ppo.md, "The value model")."""

from __future__ import annotations

import json
import os

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from .. import _trl_compat
from . import _rollout
from .value_model import load_value_weights

logger = logging.get_logger(__name__)

VALUE_MODEL_DIR = "value_model"
PPO_STATE_NAME = "ppo_state.json"
ROLLOUT_NAME = "ppo_rollout_{}.pt"  # per process: the rollout being optimised, for a resume mid-rollout


class PPOCheckpointMixin:
    """PPOTrainer's save and load hooks, each wrapping ``super()``; put before ``CheckpointSafetyMixin``.

    Reads the trainer's ``value_model``, ``kl_ctl`` and ``_policy_and_value`` (the engine's module under DeepSpeed or
    FSDP, else None).
    """

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
