"""Batches of transitions, and replay buffers that live on the training device: preallocated
tensors, FIFO ring."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


@dataclass
class Batch:
    observations: torch.Tensor  # [B, obs_dim]
    actions: torch.Tensor  # [B, act_dim]
    next_observations: torch.Tensor  # [B, obs_dim]
    rewards: torch.Tensor  # [B, 1]
    terminals: torch.Tensor  # [B, 1], 0/1
    # (a population's batch has a leading run axis on every field: [runs, B, ...])

    def __len__(self) -> int:
        """The rows B (per run, for a population's batch)."""
        return self.observations.shape[-2]

    @staticmethod
    def cat(a: Batch, b: Batch) -> Batch:
        """``a``'s rows, then ``b``'s."""
        return Batch(
            *(torch.cat([x, y], dim=-2) for x, y in zip(a.fields(), b.fields(), strict=True))
        )

    @staticmethod
    def stack(batches: list[Batch]) -> Batch:
        """One batch per run -> a population's batch [runs, B, ...]."""
        return Batch(*(torch.stack(f) for f in zip(*(b.fields() for b in batches), strict=True)))

    def fields(self) -> tuple[torch.Tensor, ...]:
        return (
            self.observations,
            self.actions,
            self.next_observations,
            self.rewards,
            self.terminals,
        )


class ReplayBuffer:
    def __init__(self, capacity: int, obs_dim: int, act_dim: int, device: torch.device) -> None:
        self.capacity, self.device = capacity, device
        widths = (obs_dim, act_dim, obs_dim, 1, 1)  # in the order of Batch's fields
        self.storage = Batch(*(torch.zeros(capacity, w, device=device) for w in widths))
        self.ptr = 0
        self.size = 0

    def named_tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self.storage, f.name) for f in dataclasses.fields(Batch)}

    @property
    def observations(self) -> torch.Tensor:
        return self.storage.observations

    def add(self, batch: Batch) -> None:
        """Append rows, overwriting the oldest once full."""
        n = len(batch)
        if n == 0:
            return
        if n > self.capacity:  # only the newest rows can survive
            batch = Batch(*(x[-self.capacity :] for x in batch.fields()))
            n = self.capacity
        first = min(n, self.capacity - self.ptr)
        for store, rows in zip(self.storage.fields(), batch.fields(), strict=True):
            store[self.ptr : self.ptr + first] = rows[:first]
            store[: n - first] = rows[first:]
        self.ptr = (self.ptr + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Batch:
        idx = torch.randint(self.size, (n,), device=self.device, generator=generator)
        return Batch(*(x[idx] for x in self.storage.fields()))

    def all(self) -> Batch:
        return Batch(*(x[: self.size] for x in self.storage.fields()))

    def observation_std(self) -> torch.Tensor:
        """``observation_std`` of the stored observations."""
        return observation_std(self.all().observations)


def observation_std(observations: torch.Tensor) -> torch.Tensor:
    """Per-dimension std of observations [N, obs_dim] (the attacks' budget scale, which policy
    files carry), computed on the CPU whatever their device, so that every copy of it (the
    trainer's, one exported from a checkpoint) is the same number."""
    return observations.cpu().std(0, unbiased=False)
