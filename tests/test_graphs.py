"""micro/graphs.py: a step as one CUDA graph (the CUDA cases are in test_cuda.py)."""

import pytest
import torch


def test_cuda_graphs_fall_back_to_eager_steps_without_fused_adam():
    """torch < 2.4 makes the optimizers unfused (no fused Adam on the CPU, where they are
    built): training goes on eagerly, with a warning, instead of failing to record."""
    from micro.graphs import graphed

    def step():
        return {}

    unfused = torch.optim.Adam([torch.zeros(2, requires_grad=True)], foreach=True)
    with pytest.warns(UserWarning, match="need fused Adam"):
        assert graphed(step, lambda: None, [unfused]) is step
