import math

import torch

from trl_extras.losses import ppo, unlikelihood
from trl_extras.losses.masked import masked_mean, masked_sum


def test_one_masked_mean_for_every_loss_module():
    assert ppo.masked_mean is masked_mean is unlikelihood.masked_mean
    assert unlikelihood.masked_sum is masked_sum


def test_per_row_and_whole_batch_means_against_hand_numbers():
    values = torch.tensor([[1.0, 2.0, -math.inf], [4.0, math.nan, 6.0], [7.0, 8.0, 9.0]])  # pads hold -inf / NaN
    mask = torch.tensor([[1, 1, 0], [1, 0, 1], [0, 0, 0]])
    torch.testing.assert_close(masked_sum(values, mask, dim=-1), torch.tensor([3.0, 10.0, 0.0]))
    torch.testing.assert_close(masked_mean(values, mask, dim=-1), torch.tensor([1.5, 5.0, 0.0]))  # empty row: 0
    assert masked_mean(values, mask, dim=None).item() == (1 + 2 + 4 + 6) / 4
    assert masked_sum(values, mask, dim=None).item() == 13.0
    assert masked_mean(values, torch.zeros_like(mask), dim=None).item() == 0.0


def test_padding_never_reaches_the_gradient():
    values = torch.tensor([[1.0, -math.inf]], requires_grad=True)
    masked_mean(values, torch.tensor([[1, 0]]), dim=-1).sum().backward()
    torch.testing.assert_close(values.grad, torch.tensor([[1.0, 0.0]]))
