"""Diffusion-DPO (Wallace et al. 2023, https://arxiv.org/abs/2311.12908), as small pure functions.

Equation 14 of the paper, for a prompt ``c`` with a preferred image ``x_0^w`` and a dispreferred one ``x_0^l``, a
timestep ``t ~ U(0, T)`` and noised images ``x_t^* = alpha_t x_0^* + sigma_t eps^*``:

    L(theta) = -E log sigmoid( -beta T w(lambda_t) * (  ||eps^w - eps_theta(x_t^w, t)||^2 - ||eps^w - eps_ref(x_t^w, t)||^2
                                                     - (||eps^l - eps_theta(x_t^l, t)||^2 - ||eps^l - eps_ref(x_t^l, t)||^2) ) )

The authors' code (github.com/SalesforceAIResearch/DiffusionDPO, ``train.py``) draws one timestep and one noise per
pair and uses them for both images (``eps^w = eps^l``), computes each ``||.||^2`` as a *mean* over the latent's
``C x H x W`` elements, and uses the constant ``beta T w(lambda_t) = beta_dpo / 2`` with ``beta_dpo = 5000`` for
SD 1.5 and SDXL (in terms of the paper's squared norms, ``beta T w(lambda_t) = beta_dpo / (2 C H W)``). Our
``beta`` is their ``beta_dpo``, so

    loss = -log sigmoid( -beta / 2 * ((err_w - ref_err_w) - (err_l - ref_err_l)) ),   err = mean_{C,H,W} (pred - target)^2

and ``beta = 5000`` reproduces the paper's runs. (diffusers' ``examples/research_projects/diffusion_dpo`` drops the
``1/2`` and defaults to 2500: the same objective.) With a v-prediction model, ``eps`` and ``eps_theta`` above become the
velocity target ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0`` and the model's velocity prediction.

The implicit rewards are ``r_w = -beta / 2 * (err_w - ref_err_w)`` and ``r_l = -beta / 2 * (err_l - ref_err_l)``:
a model that denoises an image better than the reference does earns a positive reward for it. The loss is
``-log sigmoid(r_w - r_l)``, and the implicit accuracy counts pairs with ``r_w > r_l``.

The SFT baseline of the paper trains on the preferred images alone with the usual denoising loss ``err_w``.

Flow matching (Stable Diffusion 3/3.5, Flux; the rectified-flow form of Esser et al. 2024,
https://arxiv.org/abs/2403.03206): the noised latent is the straight line ``x_sigma = (1 - sigma) x_0 + sigma eps``
for a noise level ``sigma`` in ``(0, 1]``, the network predicts the velocity ``d x_sigma / d sigma = eps - x_0``
(``flow_matching_target``; diffusers' SD3/Flux pipelines step with ``x <- x + (sigma_next - sigma) v``, so this is
their sign convention), and ``err = w(sigma) * mean_{C,H,W} (v_theta - (eps - x_0))^2`` with the per-sample weighting
``w`` of diffusers' ``compute_loss_weighting_for_sd3`` (1 for the logit-normal and mode timestep densities). The
Diffusion-DPO loss above is unchanged: both images of a pair share ``eps`` and ``sigma``, so ``w(sigma)`` scales the
pair's margin, i.e. acts as a per-timestep ``beta``.

Conventions: ``B`` pairs; predictions, targets and latents are ``(N, C, H, W)`` with ``N = B`` or ``2B``; errors,
rewards and losses are ``(B,)``, unreduced. Errors are computed in float32 whatever the input dtype (so bf16 autocast does not round
the small error differences the loss is made of).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "DEFAULT_BETA",
    "denoising_errors",
    "denoising_target",
    "diffusion_dpo_loss",
    "diffusion_sft_loss",
    "flow_matching_noisy_latents",
    "flow_matching_target",
    "best_and_worst",
    "implicit_accuracy",
    "shift_sigmas",
]

#: ``beta_dpo`` of the authors' SD 1.5 and SDXL runs.
DEFAULT_BETA = 5000.0


def denoising_target(
    prediction_type: str, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, scheduler
) -> torch.Tensor:
    """What the network should predict for ``latents`` noised with ``noise`` at ``timesteps``. ``(N, C, H, W)``

    ``prediction_type`` is the scheduler's: ``"epsilon"`` -> ``noise``; ``"v_prediction"`` -> the velocity
    ``sqrt(abar_t) noise - sqrt(1 - abar_t) latents`` (``scheduler.get_velocity``); ``"sample"`` -> ``latents``.
    """
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if prediction_type == "sample":
        return latents
    raise ValueError(
        f"Unknown prediction_type {prediction_type!r}: expected 'epsilon', 'v_prediction' or 'sample' "
        "(the `prediction_type` of the noise scheduler's config)."
    )


def denoising_errors(
    prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared error per sample, over every non-batch dimension, in float32, times ``weights`` ``(N,)`` if
    given (flow matching's per-timestep weighting). ``(N, ...) -> (N,)``"""
    errors = F.mse_loss(prediction.float(), target.float(), reduction="none").flatten(start_dim=1).mean(dim=1)
    return errors if weights is None else errors * weights.float()


def flow_matching_noisy_latents(latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """``x_sigma = (1 - sigma) x_0 + sigma eps``, ``sigmas`` ``(N,)`` broadcast over the latent. ``(N, C, H, W)``"""
    sigmas = sigmas.view(-1, *([1] * (latents.ndim - 1))).to(latents.dtype)
    return (1.0 - sigmas) * latents + sigmas * noise


def flow_matching_target(latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The velocity SD3 and Flux predict, ``eps - x_0``. ``(N, C, H, W)``"""
    return noise - latents


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's timestep shift ``s sigma / (1 + (s - 1) sigma)``: ``s > 1`` moves training towards noisier levels (the
    static ``shift`` of ``FlowMatchEulerDiscreteScheduler``; Flux's resolution-dependent shift is ``s = exp(mu)``).
    ``(N,) -> (N,)``"""
    return shift * sigmas / (1.0 + (shift - 1.0) * sigmas)


def diffusion_dpo_loss(
    model_errors_w: torch.Tensor,
    model_errors_l: torch.Tensor,
    ref_errors_w: torch.Tensor,
    ref_errors_l: torch.Tensor,
    beta: float = DEFAULT_BETA,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Equation 14 per pair. All inputs ``(B,)``; returns ``(losses, chosen_rewards, rejected_rewards)``, each ``(B,)``.

    ``chosen_rewards - rejected_rewards`` is the argument of the sigmoid, ``-beta / 2 * ((err_w - ref_w) - (err_l -
    ref_l))``. Rewards carry the gradient of the model errors; detach them before logging.
    """
    chosen_rewards = -0.5 * beta * (model_errors_w - ref_errors_w)
    rejected_rewards = -0.5 * beta * (model_errors_l - ref_errors_l)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards)
    return losses, chosen_rewards, rejected_rewards


def diffusion_sft_loss(model_errors_w: torch.Tensor) -> torch.Tensor:
    """The paper's SFT baseline: the plain denoising loss on the preferred images. ``(B,) -> (B,)``"""
    return model_errors_w


def implicit_accuracy(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """1 where the model beats the reference margin (``r_w > r_l``), 0.5 on an exact tie, else 0. ``(B,) -> (B,)``

    Ties happen at the start of training, when the model still equals the reference, so accuracy starts at chance
    (0.5) rather than 0.
    """
    margins = chosen_rewards - rejected_rewards
    return (margins > 0).float() + 0.5 * (margins == 0).float()


def best_and_worst(rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Online pairs: per prompt, the index of the highest- and of the lowest-reward sample. ``(P, K) -> (P,), (P,)``

    The first of equal rewards wins both, so a prompt whose ``K`` samples all score the same gives a pair of one image
    with itself: margin 0 and no gradient, rather than an arbitrary preference.
    """
    return rewards.argmax(dim=1), rewards.argmin(dim=1)
