"""Several seeds trained together in one process: a population.

A population of N runs is one dataset, one dynamics model and one learner whose networks carry
a leading run axis (``SAC(runs=N)``: ``PopulationActor``, critics of N × n members, N
temperatures), so that the N runs' gradient steps are one batched step. Everything else is the
runs' own (``micro.trainer.Member``): run directory, logs, model buffer and rollouts,
evaluation episodes, checkpoint, and random stream.

Run k starts exactly as ``train.py --seed k`` with the population's dynamics model does: its
networks are built after seeding the global RNGs with k, and its generator continues from
there, on the training device. A population of one computes what that ordinary run computes,
bit for bit on the CPU; in a larger one, batched products may round differently, and run k is
a statistically equivalent run, not the same bits. Each run's checkpoint is an ordinary one, so
``train.py --resume RUN_DIR`` continues any run alone; ``train.py --resume RUN_DIR RUN_DIR ...``
continues them together.

Where it lives: the learner's run axis in ``micro.algos.sac`` and ``micro.nets``, the loop over
members in ``micro.trainer``, the stages in ``micro.pipeline`` (``run_population``,
``resume_population``), the checks and the building here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from micro import MicroError
from micro.algos import algorithm_class
from micro.config import Config
from micro.run_dir import POPULATION_KEY, experiment
from micro.utils import set_seed

if TYPE_CHECKING:
    from micro.algos.base import Algorithm
    from micro.dynamics import EnsembleDynamics
    from micro.envs import SimSpec


def check_population(algo: str, seeds: Sequence[int], saved: Sequence[dict] | None = None) -> None:
    """Refuse what cannot be one population: an algorithm without a population form, repeated
    seeds, or (``saved``: the runs' config.yaml, when resuming) runs of different experiments
    or data."""
    reason = algorithm_class(algo).population_refused
    if reason is not None:
        raise MicroError(
            f"--algo {algo} cannot train seeds together: {reason}; train its seeds as separate "
            "runs (one --seed each, or sweep.py without --pack_seeds)"
        )
    if len(set(seeds)) != len(seeds):
        raise MicroError(f"--seeds repeats a seed ({' '.join(map(str, seeds))}); give each once")
    if saved is None:
        return
    first = saved[0]
    for config in saved[1:]:
        if experiment(config) != experiment(first):
            differ = sorted(
                k
                for k in set(experiment(config)) | set(experiment(first))
                if experiment(config).get(k) != experiment(first).get(k)
            )
            raise MicroError(
                f"the runs are not one experiment (they differ in {', '.join(differ)}); resume "
                "them one by one"
            )
        if config.get("dataset_sha256") != first.get("dataset_sha256"):
            raise MicroError("the runs learned from different data; resume them one by one")


def population_record(run_dirs: Sequence[Path], seeds: Sequence[int]) -> dict:
    """What each run's config.yaml records of the population it trains in."""
    return {
        POPULATION_KEY: {
            "seeds": list(seeds),
            "runs": [Path(d).name for d in run_dirs],
        }
    }


def build_population(
    cfgs: Sequence[Config], sim: SimSpec, dynamics: EnsembleDynamics, device: torch.device
) -> tuple[Algorithm, list[torch.Generator]]:
    """The learner of the runs ``cfgs`` (one per seed) on ``device``, and each run's generator.
    Run k's networks are the ones ``train.py --seed k`` builds (the global RNGs seeded with k
    just before), and its generator continues the stream that run would draw from: the CPU's
    state after building them, or on CUDA, the device's stream seeded with k."""
    cls = algorithm_class(cfgs[0].algo)
    agent = cls(cfgs[0], sim.obs_dim, sim.act_dim, dynamics, runs=len(cfgs))
    states, generators = [], []
    for cfg in cfgs:
        set_seed(cfg.seed)
        states.append(cls(cfg, sim.obs_dim, sim.act_dim, dynamics).training_state())
        generator = torch.Generator(device)
        if device.type == "cpu":
            generator.set_state(torch.get_rng_state())
        else:
            generator.manual_seed(cfg.seed)
        generators.append(generator)
    agent.load_runs_training_state(states)
    agent.to(device)
    agent.generators = generators
    return agent, generators
