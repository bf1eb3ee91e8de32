"""Replay buffers that live on the training device: preallocated tensors, FIFO ring."""

from __future__ import annotations

import torch

from micro.agent import Batch


class ReplayBuffer:
    def __init__(self, capacity: int, obs_dim: int, act_dim: int, device: torch.device) -> None:
        self.capacity, self.device = capacity, device
        self.observations = torch.zeros(capacity, obs_dim, device=device)
        self.actions = torch.zeros(capacity, act_dim, device=device)
        self.next_observations = torch.zeros(capacity, obs_dim, device=device)
        self.rewards = torch.zeros(capacity, 1, device=device)
        self.terminals = torch.zeros(capacity, 1, device=device)
        self.ptr = 0
        self.size = 0

    def named_tensors(self) -> dict[str, torch.Tensor]:
        return dict(
            zip(
                ("observations", "actions", "next_observations", "rewards", "terminals"),
                self._tensors(),
                strict=True,
            )
        )

    def _tensors(self) -> tuple[torch.Tensor, ...]:
        return (
            self.observations,
            self.actions,
            self.next_observations,
            self.rewards,
            self.terminals,
        )

    def add(self, batch: Batch) -> None:
        """Append rows, overwriting the oldest once full."""
        n = len(batch)
        if n == 0:
            return
        if n > self.capacity:  # only the newest rows can survive
            batch = Batch(*(x[-self.capacity :] for x in batch.fields()))
            n = self.capacity
        first = min(n, self.capacity - self.ptr)
        for store, rows in zip(self._tensors(), batch.fields(), strict=True):
            store[self.ptr : self.ptr + first] = rows[:first]
            store[: n - first] = rows[first:]
        self.ptr = (self.ptr + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Batch:
        idx = torch.randint(self.size, (n,), device=self.device, generator=generator)
        return Batch(*(x[idx] for x in self._tensors()))

    def all(self) -> Batch:
        return Batch(*(x[: self.size] for x in self._tensors()))
