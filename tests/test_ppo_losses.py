"""PPO maths (trl_extras.losses.ppo) against numbers worked out by hand and against the papers' formulas."""

import math

import pytest
import torch

from trl_extras.losses.ppo import (
    KLController,
    gae_advantages_and_returns,
    masked_mean,
    masked_moments,
    masked_var,
    masked_whiten,
    per_token_kl,
    per_token_rewards,
    ppo_policy_loss,
    ppo_value_loss,
)


def test_per_token_kl_k1_and_k3():
    logprobs = torch.tensor([[-1.0, -2.0]])
    ref_logprobs = torch.tensor([[-1.5, -1.0]])
    # k1 = log pi - log pi_ref
    torch.testing.assert_close(per_token_kl(logprobs, ref_logprobs, "k1"), torch.tensor([[0.5, -1.0]]))
    # k3 = (r - 1) - log r with log r = log pi_ref - log pi = [-0.5, 1.0]
    expected = torch.tensor([[math.exp(-0.5) - 1 + 0.5, math.e - 1 - 1.0]])
    torch.testing.assert_close(per_token_kl(logprobs, ref_logprobs, "k3"), expected)
    assert (per_token_kl(torch.randn(4, 5), torch.randn(4, 5), "k3") >= 0).all()
    with pytest.raises(ValueError, match="kl_estimator"):
        per_token_kl(logprobs, ref_logprobs, "k2")


def test_per_token_rewards_put_the_kl_everywhere_and_the_score_on_the_last_real_token():
    scores = torch.tensor([2.0, -1.0, 5.0])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [0, 0, 0]])
    rewards, non_score = per_token_rewards(scores, kl, mask, kl_coef=0.5)
    torch.testing.assert_close(non_score, torch.tensor([[-0.05, -0.1, -0.15], [-0.2, -0.25, 0.0], [0.0, 0.0, 0.0]]))
    # row 0 ends at t=2, row 1 at t=1 (padding after it), row 2 has no token and gets no score
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, -0.1, 1.85], [-0.2, -1.25, 0.0], [0.0, 0.0, 0.0]]))


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    mask = torch.ones(1, 3)
    # gamma=1, lam=0.5: delta = [0.1, 0.1, 0.3]; A2 = 0.3, A1 = 0.1 + 0.5 * 0.3, A0 = 0.1 + 0.5 * 0.25
    advantages, returns = gae_advantages_and_returns(rewards, values, mask, gamma=1.0, lam=0.5)
    torch.testing.assert_close(advantages, torch.tensor([[0.225, 0.25, 0.3]]))
    torch.testing.assert_close(returns, torch.tensor([[0.725, 0.85, 1.0]]))
    # lam=1: the returns are the discounted rewards-to-go, whatever the values
    advantages, returns = gae_advantages_and_returns(rewards, values, mask, gamma=0.9, lam=1.0)
    torch.testing.assert_close(returns, torch.tensor([[0.81, 0.9, 1.0]]))
    torch.testing.assert_close(advantages, torch.tensor([[0.31, 0.3, 0.3]]))


def test_gae_ends_the_episode_at_the_last_real_token():
    rewards = torch.tensor([[0.0, 1.0, 5.0]])
    values = torch.tensor([[0.2, 0.4, 9.0]])  # the padded position's reward and value must not leak in
    mask = torch.tensor([[1, 1, 0]])
    advantages, returns = gae_advantages_and_returns(rewards, values, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(advantages, torch.tensor([[0.8, 0.6, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[1.0, 1.0, 0.0]]))


def test_gae_matches_the_papers_sum_of_discounted_td_errors():
    torch.manual_seed(0)
    rewards, values = torch.randn(3, 6), torch.randn(3, 6)
    lengths = [6, 4, 1]
    mask = torch.tensor([[1] * n + [0] * (6 - n) for n in lengths])
    gamma, lam = 0.95, 0.9
    advantages, returns = gae_advantages_and_returns(rewards, values, mask, gamma, lam)
    for b, n in enumerate(lengths):
        v = values[b, :n].tolist() + [0.0]  # V after the last token is 0
        deltas = [rewards[b, t].item() + gamma * v[t + 1] - v[t] for t in range(n)]
        for t in range(n):  # A_t = sum_l (gamma * lam)^l * delta_{t+l}  (Schulman et al. 2015, eq. 16)
            expected = sum((gamma * lam) ** k * deltas[t + k] for k in range(n - t))
            assert advantages[b, t].item() == pytest.approx(expected, abs=1e-5)
            assert returns[b, t].item() == pytest.approx(expected + v[t], abs=1e-5)
        assert (advantages[b, n:] == 0).all() and (returns[b, n:] == 0).all()


def test_masked_statistics_and_whitening():
    x = torch.tensor([[2.0, 4.0, 6.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    assert masked_mean(x, mask, dim=None).item() == pytest.approx(4.0)
    assert masked_var(x, mask).item() == pytest.approx(4.0)  # ((-2)^2 + 0 + 2^2) / (3 - 1)
    assert masked_var(x, mask, unbiased=False).item() == pytest.approx(8 / 3)
    torch.testing.assert_close(masked_whiten(x, mask), torch.tensor([[-1.0, 0.0, 1.0, 0.0]]))
    torch.testing.assert_close(masked_whiten(x, mask, shift_mean=False), torch.tensor([[3.0, 4.0, 5.0, 0.0]]))
    torch.testing.assert_close(masked_mean(x, mask, dim=1), torch.tensor([4.0]))
    # statistics from elsewhere (the trainer's, over every process's tokens) replace the batch's own
    stats = {"mean": torch.tensor(2.0), "var": torch.tensor(16.0)}
    whitened = masked_whiten(x, mask, eps=0.0, **stats)
    torch.testing.assert_close(whitened, torch.tensor([[0.0, 0.5, 1.0, 0.0]]))  # (x - 2) / 4 on real tokens
    whitened = masked_whiten(x, mask, shift_mean=False, eps=0.0, **stats)
    torch.testing.assert_close(whitened, torch.tensor([[2.0, 2.5, 3.0, 0.0]]))


def test_masked_moments_over_processes_are_those_of_the_whole_batch():
    x = torch.tensor([[2.0, 4.0, 6.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    one = masked_moments(x, mask)  # one process: masked_mean and masked_var
    assert one["mean"].item() == pytest.approx(4.0) and one["var"].item() == pytest.approx(4.0)
    # two processes holding the same rows: the sums double, so the moments are those of [x; x] on one process
    two = masked_moments(x, mask, reduce_sum=lambda t: 2 * t)
    both, both_mask = torch.cat([x, x]), torch.cat([mask, mask])
    assert two["mean"].item() == pytest.approx(masked_mean(both, both_mask, dim=None).item())
    assert two["var"].item() == pytest.approx(masked_var(both, both_mask).item())  # 16 / 5, not 4
    assert two["var"].item() == pytest.approx(16 / 5)
    single = masked_moments(x, torch.tensor([[0, 1, 0, 0]]))  # one masked token: variance 0, not NaN
    assert single["mean"].item() == 4.0 and single["var"].item() == 0.0


def test_policy_loss_clips_by_hand():
    ratio = torch.tensor([[1.5, 0.5, 1.1, 0.5]])
    advantages = torch.tensor([[1.0, 1.0, -1.0, -2.0]])
    logprobs = ratio.log().requires_grad_()
    loss, clipped, out_ratio = ppo_policy_loss(logprobs, torch.zeros_like(ratio), advantages, cliprange=0.2)
    # max(-A * r, -A * clip(r, 0.8, 1.2)) per token
    torch.testing.assert_close(loss, torch.tensor([[-1.2, -0.5, 1.1, 1.6]]))
    assert clipped.tolist() == [[True, False, False, True]]
    torch.testing.assert_close(out_ratio, ratio)
    loss.sum().backward()
    # a clipped token has no gradient; an unclipped one has d(-A * r)/d log pi = -A * r
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.0, -0.5, 1.1, 0.0]]))


def test_policy_loss_is_the_negated_ppo_clip_objective():
    torch.manual_seed(0)
    logprobs, old, advantages = torch.randn(4, 7) * 0.3, torch.randn(4, 7) * 0.3, torch.randn(4, 7)
    loss, _, _ = ppo_policy_loss(logprobs, old, advantages, cliprange=0.1)
    ratio = torch.exp(logprobs - old)
    objective = torch.min(ratio * advantages, torch.clamp(ratio, 0.9, 1.1) * advantages)  # L^CLIP, Schulman 2017
    torch.testing.assert_close(loss, -objective)


def test_value_loss_clips_by_hand():
    values = torch.tensor([[1.0, 0.0, 0.5, 0.9]], requires_grad=True)
    old_values = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    returns = torch.tensor([[2.0, 0.0, 1.0, 0.0]])
    loss, clipped = ppo_value_loss(values, old_values, returns, cliprange_value=0.2)
    # 1/2 max((V - R)^2, (clip(V, 0.3, 0.7) - R)^2)
    torch.testing.assert_close(loss, torch.tensor([[0.5 * 1.69, 0.5 * 0.09, 0.5 * 0.25, 0.5 * 0.81]]))
    assert clipped.tolist() == [[True, True, False, False]]
    loss.sum().backward()
    torch.testing.assert_close(values.grad, torch.tensor([[0.0, 0.0, -0.5, 0.9]]))  # (V - R) where unclipped


def test_kl_controller():
    fixed = KLController(value=0.1)
    assert fixed.update(current_kl=50.0, n_episodes=64) == 0.1
    adaptive = KLController(value=0.1, target=1.0, horizon=100)
    # error = clip(2 / 1 - 1, -0.2, 0.2) = 0.2 -> beta * (1 + 0.2 * 10 / 100)
    assert adaptive.update(current_kl=2.0, n_episodes=10) == pytest.approx(0.102)
    # error = clip(0.9 / 1 - 1) = -0.1 -> beta * (1 - 0.1 * 10 / 100)
    assert adaptive.update(current_kl=0.9, n_episodes=10) == pytest.approx(0.102 * 0.99)
