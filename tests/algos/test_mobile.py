"""micro/algos/mobile.py: MOBILE's penalty and target, known values and against MICRO's."""

import pytest
import torch
from test_sac import N_REAL, make_agent, make_batch, make_noise

from micro.algos.micro import state_uncertainty
from micro.algos.mobile import bellman_inconsistency, mobile_target


def test_bellman_inconsistency_known_values():
    # member means 1, 3, 8: mean 4, squared deviations 9 + 1 + 16 = 26, / (3 - 1) -> std √13
    values = torch.tensor([[[0.0], [2.0], [8.0]], [[2.0], [4.0], [8.0]]])
    assert bellman_inconsistency(values).item() == pytest.approx(13**0.5)


def test_mobile_target_known_values():
    # y = r - beta P + gamma (1 - d) V, clamped: the penalty is not discounted
    r, d = torch.tensor([1.0, 1.0, 0.1]), torch.tensor([0.0, 1.0, 0.0])
    v, p = torch.tensor([10.0, 10.0, 0.0]), torch.tensor([2.0, 2.0, 1.0])
    y = mobile_target(r, d, v, p, 0.5, 0.25)
    torch.testing.assert_close(y, torch.tensor([1.0 - 0.5 + 5.0, 0.5, 0.0]))


def test_mobile_and_micro_differ_only_in_the_penalty():
    """Same weights, batch and noise: MICRO and MOBILE see the same per-elite values."""
    batch, noise = make_batch(), make_noise()
    micro, mobile = make_agent(algo="micro"), make_agent(algo="mobile")
    values = micro.elite_values(
        batch.observations[N_REAL:], batch.actions[N_REAL:], noise.model_state, noise.model_action
    )
    _, u = micro.target(batch, N_REAL, noise)
    _, p = mobile.target(batch, N_REAL, noise)
    torch.testing.assert_close(u[N_REAL:], state_uncertainty(values))
    torch.testing.assert_close(p[N_REAL:], bellman_inconsistency(values))
