"""micro/algos/penalized.py: the per-elite values MICRO and MOBILE share."""

import torch
from test_sac import N_REAL, make_agent, make_batch, make_noise


def test_chunked_uncertainty_equals_one_block(monkeypatch):
    """The CPU path evaluates U in row blocks; blocks must not change the result."""
    import micro.algos.penalized

    agent, batch, noise = make_agent(), make_batch(), make_noise()
    y_one, u_one = agent.target(batch, N_REAL, noise)
    monkeypatch.setattr(micro.algos.penalized, "UNCERTAINTY_CHUNK", 5)  # 72 states -> 15 blocks
    y_blocks, u_blocks = agent.target(batch, N_REAL, noise)
    torch.testing.assert_close(u_blocks, u_one)
    torch.testing.assert_close(y_blocks, y_one)
