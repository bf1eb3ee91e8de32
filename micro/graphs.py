"""A gradient step as one CUDA graph.

On a GPU, one step at SPEC's sizes is a few hundred small kernels (batch sampling, the target
with its U(s, a) term over K·E·M states, two backward passes, three optimizer steps, the Polyak
update); launching them one by one from Python costs more than their arithmetic. ``GraphedStep``
records the step once with ``torch.cuda.graph`` and then replays it with a single launch.

What a replay computes is what the eager step computes, draw for draw: the step's random draws
come from the same Philox stream at the same offsets (a replay advances the generator by what
the recorded kernels consume), so replays and eager steps can be mixed in any order. The step
reads some Python-side values that a recording freezes: the buffers' sizes (the bounds of the
batch indices) and the optimizers' learning rates. ``key`` returns them; when it changes, the
step is recorded again (at most once per rollout and per learning-rate change, i.e. per epoch).

Requirements on ``step``: no host synchronisation (no ``.item()``, boolean masks or
data-dependent shapes), and Adam with ``fused=True`` (its step counters live on the GPU).

A population's step (``micro.population``) draws from one generator per run; those are
registered with each recording (``CUDAGraph.register_generator_state``), so that replays
advance them as the default generator's are advanced. Where torch lacks that, the step runs
eagerly (``can_record_generators``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable, Sequence

import torch

Step = Callable[[], dict[str, torch.Tensor]]


def fused(optimizers: Sequence[torch.optim.Optimizer]) -> bool:
    return all(g.get("fused") for opt in optimizers for g in opt.param_groups)


def can_record_generators() -> bool:
    """Whether this torch can register a generator of its own with a CUDA graph."""
    return hasattr(torch.cuda.CUDAGraph, "register_generator_state")


def graphed(
    step: Step,
    key: Callable[[], Hashable],
    optimizers: Sequence[torch.optim.Optimizer],
    generators: Sequence[torch.Generator] = (),
) -> Step:
    """``step`` as a ``GraphedStep``, or ``step`` itself (with a warning) where Adam is not
    fused (torch before 2.4 has no fused Adam for the CPU, where the optimizers are made) or
    where ``generators`` (a population's) cannot be registered with a graph."""
    if generators and not can_record_generators():
        warnings.warn(
            f"CUDA graphs are off for this population: torch {torch.__version__} cannot record "
            "draws from the runs' own generators; steps run eagerly",
            stacklevel=2,
        )
        return step
    if fused(optimizers):
        return GraphedStep(step, key, optimizers, generators=generators)
    warnings.warn(
        f"CUDA graphs are off: they need fused Adam, which torch {torch.__version__} did not "
        "give here (torch >= 2.4 does); steps run eagerly",
        stacklevel=2,
    )
    return step


class GraphedStep:
    """Call it in place of ``step``: the first ``warmup`` calls run eagerly on a side stream
    (lazy state: optimizer moments, cuBLAS workspaces), later ones replay a recording."""

    def __init__(
        self,
        step: Step,
        key: Callable[[], Hashable],
        optimizers: Sequence[torch.optim.Optimizer],
        warmup: int = 3,
        generators: Sequence[torch.Generator] = (),
    ) -> None:
        if not fused(optimizers):
            raise ValueError("CUDA graphs need fused Adam (micro.utils.adam on CUDA)")
        self.step, self.key, self.optimizers, self.warmup = step, key, list(optimizers), warmup
        self.generators = list(generators)  # a population's runs' own: registered per recording
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_key: Hashable = None
        self.outputs: dict[str, torch.Tensor] = {}
        self.eager_steps = 0
        self.recordings = 0  # how many times the step was recorded (for tests and logs)

    def __call__(self) -> dict[str, torch.Tensor]:
        if self.eager_steps < self.warmup:
            self.eager_steps += 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                out = self.step()
            torch.cuda.current_stream().wait_stream(side)
            return out
        key = self.key()
        if self.graph is None or key != self.graph_key:
            self._record(key)
        assert self.graph is not None
        self.graph.replay()
        return self.outputs  # overwritten by the next replay: copy what must be kept

    def _record(self, key: Hashable) -> None:
        # Free the old recording's memory first. Each recording gets its own memory pool: a
        # pool shared with a deleted recording is gone with it (torch asserts on reuse).
        self.graph, self.outputs = None, {}
        for opt in self.optimizers:
            # Gradients made inside the recording live in its memory pool, where a replay
            # rewrites them; leftover ones from eager steps would be accumulated into.
            opt.zero_grad(set_to_none=True)
        flags = [(g, g["capturable"]) for opt in self.optimizers for g in opt.param_groups]
        for group, _ in flags:
            group["capturable"] = True  # fused Adam reads its step counter on the GPU anyway
        graph = torch.cuda.CUDAGraph()
        for generator in self.generators:
            graph.register_generator_state(generator)
        try:
            with torch.cuda.graph(graph):
                outputs = self.step()  # recorded, not run
        finally:
            for group, flag in flags:
                group["capturable"] = flag  # so checkpoints load on any device
        self.graph, self.graph_key, self.outputs = graph, key, outputs
        self.recordings += 1
