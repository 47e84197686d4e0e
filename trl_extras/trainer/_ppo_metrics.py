"""PPOTrainer's metrics, under the names TRL's old PPOTrainer logged (the table: docs/ppo.md, "Metrics")."""

from __future__ import annotations

import torch

from .. import _trl_compat
from ..losses.ppo import masked_mean


def log_rollout_metrics(trainer, mode, scores, kl, non_score_rewards, old_logps, mask, has_eos, kl_coef):
    """Per rollout: sums over each completion's tokens (`mask`: (B, T)), means over every process's completions.

    Returns the gathered sequence KL, `(B * num_processes,)`, for the KL controller."""
    gather = trainer.accelerator.gather
    seq_kl = gather((kl * mask).sum(dim=1))
    seq_non_score = gather(non_score_rewards.sum(dim=1))
    all_scores = gather(scores)
    metrics = _trl_compat.metrics(trainer)[mode]
    metrics["objective/kl"].append(seq_kl.mean().item())
    metrics["objective/entropy"].append(gather((-old_logps * mask).sum(dim=1)).mean().item())
    metrics["objective/non_score_reward"].append(seq_non_score.mean().item())
    metrics["objective/scores"].append(all_scores.mean().item())
    metrics["objective/rlhf_reward"].append((all_scores + seq_non_score).mean().item())
    metrics["objective/kl_coef"].append(kl_coef)
    metrics["val/num_eos_tokens"].append(gather(has_eos.float()).sum().item())
    return seq_kl


@torch.no_grad()
def log_loss_metrics(trainer, mode, mask, logps, old_logps, entropies, ratio, losses, clipped, aux_loss):
    """Per micro-batch: masked means over every process's tokens (`mask`: (B, T)). `losses` and `clipped` are the
    (policy, value) pairs that `ppo_policy_loss` and `ppo_value_loss` return, unreduced."""
    reduce = trainer.accelerator.reduce

    def global_mean(x):  # masked mean over every process's tokens
        totals = reduce(torch.stack([(x * mask).sum(), mask.sum().float()]), reduction="sum")
        return (totals[0] / totals[1].clamp(min=1.0)).item()

    def mean_of_means(x):  # this micro-batch's mean on each process, averaged over processes
        return trainer.accelerator.gather(x.detach()).mean().item()

    (policy_loss, value_loss), (policy_clipped, value_clipped) = losses, clipped
    log_ratio = logps - old_logps
    ratio_mean = global_mean(ratio)
    metrics = _trl_compat.metrics(trainer)[mode]
    metrics["policy/approxkl_avg"].append(global_mean(0.5 * log_ratio**2))
    metrics["policy/clipfrac_avg"].append(global_mean(policy_clipped.float()))
    metrics["policy/entropy_avg"].append(global_mean(entropies))
    metrics["loss/policy_avg"].append(mean_of_means(masked_mean(policy_loss, mask, dim=None)))
    metrics["loss/value_avg"].append(mean_of_means(masked_mean(value_loss, mask, dim=None)))
    metrics["val/clipfrac_avg"].append(global_mean(value_clipped.float()))
    metrics["val/ratio"].append(ratio_mean)
    metrics["val/ratio_var"].append(global_mean((ratio - ratio_mean) ** 2))
    if trainer.aux_loss_enabled:
        metrics["aux_loss"].append(mean_of_means(aux_loss))
