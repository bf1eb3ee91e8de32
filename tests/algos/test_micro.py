"""micro/algos/micro.py: MICRO's uncertainty and conservative target, known values."""

import torch

from micro.algos.micro import conservative_target, state_uncertainty


def test_state_uncertainty_known_values():
    # K=2 samples, E=3 elites, B=1 row: member means 1, 3, 8 -> U = 4 - 1 = 3
    values = torch.tensor([[[0.0], [2.0], [8.0]], [[2.0], [4.0], [8.0]]])
    assert state_uncertainty(values).tolist() == [3.0]


def test_target_is_clamped_at_zero():
    r, d = torch.tensor([-5.0, 1.0, -0.5]), torch.tensor([0.0, 1.0, 1.0])
    y = conservative_target(r, d, torch.tensor([1.0, 9.0, 9.0]), torch.zeros(3), 0.99, 1.0)
    torch.testing.assert_close(y, torch.tensor([0.0, 1.0, 0.0]))
