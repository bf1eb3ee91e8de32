"""Populations: several seeds trained together in one process (``train.py --seeds``).

A population of one is the ordinary run to the bit; a population's runs are independent (one
run's batch, noise or weights change no other run's update); each run's target is the single
learner's target on its own slice; a killed population resumes exactly; a run whose values turn
non-finite stops alone; and the files are ordinary runs' (report, eval, --resume of one run).
"""

import filecmp
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, TINY_CONFIG, read_rows, run_eval, run_train

from micro import MicroError
from micro.algos import algorithm_class
from micro.algos.sac import TargetNoise
from micro.buffer import Batch
from micro.checkpoint import settle_together
from micro.config import Config
from micro.dynamics import EnsembleDynamics
from micro.utils import atomic_torch_save

OBS, ACT = 11, 3
ALGOS = ["micro", "mobile", "mopo"]


def learners(algo: str, seeds=(0, 1, 2), **overrides):
    """One ordinary learner per seed and their population (the same weights), on a shared
    random model."""
    cfg = Config(algo=algo, hidden_dims=[32, 32], num_samples=3, **overrides)
    torch.manual_seed(100)
    dynamics = EnsembleDynamics(OBS, ACT, [16] * 4, 7, 5, cfg.dynamics_weight_decay)
    dynamics.requires_grad_(False)
    cls = algorithm_class(algo)
    singles = []
    for seed in seeds:
        torch.manual_seed(seed)
        singles.append(cls(cfg, OBS, ACT, dynamics))
    pop = cls(cfg, OBS, ACT, dynamics, runs=len(seeds))
    pop.load_runs_training_state([s.training_state() for s in singles])
    return cfg, singles, pop


def batches(n: int, rows: int = 64, seed: int = 7) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    return [
        Batch(
            torch.randn(rows, OBS, generator=g),
            torch.rand(rows, ACT, generator=g) * 2 - 1,
            torch.randn(rows, OBS, generator=g),
            torch.randn(rows, 1, generator=g),
            (torch.rand(rows, 1, generator=g) < 0.1).float(),
        )
        for _ in range(n)
    ]


def generators(seeds):
    return [torch.Generator().manual_seed(1000 + s) for s in seeds]


def states_equal(a: dict, b: dict) -> bool:
    """Two training states hold equal tensors (networks and optimizer moments)."""

    def flat(obj, prefix=""):
        if isinstance(obj, torch.Tensor):
            yield prefix, obj
        elif isinstance(obj, dict):
            for k in sorted(obj, key=str):
                yield from flat(obj[k], f"{prefix}/{k}")
        elif isinstance(obj, list | tuple):
            for i, v in enumerate(obj):
                yield from flat(v, f"{prefix}/{i}")

    fa, fb = dict(flat(a)), dict(flat(b))
    return fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa)


@pytest.mark.parametrize("algo", ALGOS)
def test_a_population_holds_its_runs_states(algo):
    """run_training_state(k) gives back run k's ordinary training state, before and after a
    step (optimizer moments included)."""
    _, singles, pop = learners(algo)
    for k, single in enumerate(singles):
        assert states_equal(pop.run_training_state(k), single.training_state())
    pop.generators = generators(range(3))
    pop.update(Batch.stack(batches(3)), 8)
    again = algorithm_class(algo)(pop.cfg, OBS, ACT, pop.dynamics, runs=3)
    again.load_runs_training_state([pop.run_training_state(k) for k in range(3)])
    for k in range(3):
        assert states_equal(again.run_training_state(k), pop.run_training_state(k))


@pytest.mark.parametrize("algo", ALGOS)
def test_population_of_one_updates_like_the_learner(algo):
    """One run as a population: the same update as the ordinary learner, to the bit, its draws
    from its generator where the learner's come from the global one."""
    _, (single,), pop = learners(algo, seeds=(4,))
    batch = batches(1)[0]
    for _ in range(3):
        torch.manual_seed(11)
        generator = torch.Generator().manual_seed(11)
        pop.generators = [generator]
        m1 = single.update(batch, 8)
        m2 = pop.update(Batch.stack([batch]), 8)
        assert all(torch.equal(m1[k], m2[k][0]) for k in m1)
    assert states_equal(pop.run_training_state(0), single.training_state())


@pytest.mark.parametrize("algo", ALGOS)
def test_each_runs_target_is_the_learners_target_on_its_slice(algo):
    """The batched target of run k equals the ordinary learner's target function on run k's
    batch with run k's noise (the penalty's model samples and policy draws included)."""
    cfg, singles, pop = learners(algo)
    data = batches(3, rows=48)
    n_real, rows, k, e = 8, 40, cfg.num_samples, cfg.n_elites
    g = torch.Generator().manual_seed(3)
    noises = [
        TargetNoise(
            torch.randn(48, ACT, generator=g),
            torch.randn(k, e, rows, OBS, generator=g),
            torch.randn(k * e * rows, ACT, generator=g),
        )
        for _ in range(3)
    ]
    stacked = TargetNoise(
        *(
            torch.stack([getattr(n, f) for n in noises])
            for f in ("next_action", "model_state", "model_action")
        )
    )
    y, penalty = pop.target(Batch.stack(data), n_real, stacked)
    for r, single in enumerate(singles):
        y1, p1 = single.target(data[r], n_real, noises[r])
        torch.testing.assert_close(y[r], y1, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(penalty[r], p1, rtol=1e-6, atol=1e-6)
    if algo != "mopo":  # its penalty is in the rollouts: the target has none
        assert penalty[:, n_real:].abs().sum() > 0


@pytest.mark.parametrize("algo", ALGOS)
def test_runs_are_independent(algo):
    """Changing run 1's batch, noise and weights changes nothing in runs 0 and 2."""

    def step(change_run_1: bool):
        _, _, pop = learners(algo)
        data = batches(3)
        gens = generators(range(3))
        if change_run_1:
            data[1] = batches(1, seed=99)[0]
            gens[1] = torch.Generator().manual_seed(12345)
            with torch.no_grad():
                for p in pop.actor.params:
                    p[1].mul_(1.5)
                pop.critics.net.layers[0].weight[2:4].add_(0.1)
        pop.generators = gens
        for _ in range(2):
            metrics = pop.update(Batch.stack(data), 8)
        return pop, metrics

    a, ma = step(False)
    b, mb = step(True)
    for run in (0, 2):
        assert states_equal(a.run_training_state(run), b.run_training_state(run))
        assert all(torch.equal(ma[k][run], mb[k][run]) for k in ma)
    assert not states_equal(a.run_training_state(1), b.run_training_state(1))


def test_algorithms_without_a_population_form_are_refused():
    from micro.population import check_population

    with pytest.raises(MicroError, match="rambo cannot train seeds together: it trains its own"):
        check_population("rambo", [0, 1])
    with pytest.raises(MicroError, match="repeats a seed"):
        check_population("micro", [0, 1, 0])


# --- checkpoints of a population -----------------------------------------------------------------


def _checkpoint(path, epoch):
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save({"format": "micro-checkpoint-v2", "task": "t", "epoch": epoch}, path)


def _epochs(pairs):
    return [torch.load(final, weights_only=True)["epoch"] for _, final in pairs]


def test_a_commit_cut_short_is_finished_or_undone(tmp_path):
    pairs = [(tmp_path / f"r{i}" / "next.pt", tmp_path / f"r{i}" / "last.pt") for i in range(3)]
    # killed while renaming: run 0 at epoch 5, runs 1 and 2 staged at 5 -> all at 5
    _checkpoint(pairs[0][1], 5)
    for i in (1, 2):
        _checkpoint(pairs[i][1], 4)
        _checkpoint(pairs[i][0], 5)
    settle_together(pairs, "t")
    assert _epochs(pairs) == [5, 5, 5] and not any(s.exists() for s, _ in pairs)
    # killed while writing: runs 0 and 1 staged at 6, run 2 not -> all stay at 5
    for i in (0, 1):
        _checkpoint(pairs[i][0], 6)
    settle_together(pairs, "t")
    assert _epochs(pairs) == [5, 5, 5] and not any(s.exists() for s, _ in pairs)
    # written but not renamed at all -> all at 6
    for i in range(3):
        _checkpoint(pairs[i][0], 6)
    settle_together(pairs, "t")
    assert _epochs(pairs) == [6, 6, 6]
    # runs that were never one population
    _checkpoint(pairs[2][1], 3)
    with pytest.raises(MicroError, match="different epochs"):
        settle_together(pairs, "t")


# --- the command line ----------------------------------------------------------------------------


def _train(args, logdir, env=None, check=True):
    return run_train([*args, "--logdir", str(logdir)], env or dict(os.environ), check=check)


def _runs(logdir, algo="micro"):
    return sorted((logdir / "hopper-medium-v2" / algo).iterdir())


@pytest.fixture(scope="module")
def tiny(hopper_file, tmp_path_factory):
    cfg = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    cfg.write_text(TINY_CONFIG)
    return ["--task", "hopper-medium-v2", "--dataset", str(hopper_file), "--config", str(cfg)]


def _same_run(a, b):
    """The same progress.csv, evaluation episodes, policy tensors and checkpoint tensors."""
    for name in ("progress.csv", "eval-episodes.csv"):
        assert filecmp.cmp(a / name, b / name, shallow=False), name
    for name in ("policy.pt", "checkpoints/last.pt"):
        x = torch.load(a / name, weights_only=True)
        y = torch.load(b / name, weights_only=True)
        assert states_equal(
            {k: v for k, v in x.items() if k not in ("config", "saved_at")},
            {k: v for k, v in y.items() if k not in ("config", "saved_at")},
        ), name


@pytest.mark.parametrize("algo", ALGOS)
def test_population_of_one_is_the_ordinary_run(tiny, tmp_path, algo):
    """Every file the same: training metrics, rollouts, evaluation episodes, the policy's and
    the checkpoint's tensors (MOPO's rollout penalty drawn from the run's generator too)."""
    _train([*tiny, "--algo", algo, "--seed", "3"], tmp_path / "one")
    out = _train([*tiny, "--algo", algo, "--seeds", "3"], tmp_path / "pop")
    assert "a population of 1:" in out.stdout
    (a,), (b,) = _runs(tmp_path / "one", algo), _runs(tmp_path / "pop", algo)
    _same_run(a, b)


@pytest.fixture(scope="module")
def population(tiny, tmp_path_factory):
    logdir = tmp_path_factory.mktemp("population")
    out = _train([*tiny, "--seeds", "0", "1", "2", "--snapshot_freq", "1"], logdir)
    return logdir, out


def test_population_writes_ordinary_runs(population):
    logdir, out = population
    runs = _runs(logdir)
    assert [r.name.split("-")[0] for r in runs] == ["seed0", "seed1", "seed2"]
    assert "a population of 3:" in out.stdout
    for seed, run in enumerate(runs):
        config = (run / "config.yaml").read_text()
        assert f"seed: {seed}\n" in config and "population:" in config
        rows = (run / "progress.csv").read_text().splitlines()
        assert len(rows) == 3  # header and two epochs
        assert (run / "policy.pt").exists() and (run / "snapshots" / "epoch1.pt").exists()
        assert (run / "dynamics" / "model.pt").exists()
        timings = json.loads((run / "timings.json").read_text())
        assert timings["population"] == 3
        blob = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
        assert blob["epoch"] == 2 and not (run / "checkpoints" / "next.pt").exists()
    # one model, copied into every run; different seeds learn differently
    models = {(r / "dynamics" / "model.pt").read_bytes() for r in runs}
    assert len(models) == 1
    progress = {(r / "progress.csv").read_text() for r in runs}
    assert len(progress) == 3


def test_population_runs_go_through_report_and_eval(population, tmp_path):
    logdir, _ = population
    out = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "report.py", str(logdir), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = read_rows(out / "summary.csv")
    assert row["algo"] == "micro" and row["seeds"] == "0 1 2"  # three seeds of one experiment
    # each run's cost is a third of the process's: (updates + rollouts) / 3 per 1000 steps
    t = json.loads((_runs(logdir)[0] / "timings.json").read_text())
    expected = (t["updates"] + t["rollouts"]) / 3 / 40 * 1000
    assert float(row["train_s_per_1k"]) == pytest.approx(expected, rel=1e-3)
    policies = [str(r / "policy.pt") for r in _runs(logdir)]
    out = tmp_path / "eval"
    args = ["--policy_path", *policies, "--choice", "clean", "--eval_episodes", "1"]
    run_eval([*args, "--out", str(out)])
    rows = read_rows(out / "clean.csv")
    assert sorted(r["seed"] for r in rows) == ["0", "1", "2"]


def test_population_runs_ship_and_say_they_shared_the_process(population, tmp_path):
    from micro.results import ship, table

    for run in _runs(population[0]):
        ship(run, "hopper-tiny", tmp_path)
    rows = table(tmp_path).splitlines()[2:]
    assert len(rows) == 3 and all("(3 runs together)" in r for r in rows)
    costs = [json.loads((r / "timings.json").read_text()) for r in _runs(population[0])]
    assert costs[0] == costs[1] == costs[2]  # the process's time, recorded in each run


def test_killed_population_resumes_exactly(tiny, tmp_path):
    """Killed after a checkpoint, resumed with --resume RUN RUN RUN: the same files as an
    uninterrupted population."""
    from test_reliability import killed_run

    args = [*tiny, "--seeds", "0", "1", "2", "--epoch", "4", "--snapshot_freq", "1"]
    _train(args, tmp_path / "reference")
    first = killed_run(args, tmp_path / "killed", rows=4)
    runs = _runs(tmp_path / "killed")
    assert first in runs and len(runs) == 3
    out = run_train(["--resume", *map(str, runs)], dict(os.environ))
    assert "resuming 3 runs at epoch" in out.stdout
    for a, b in zip(runs, _runs(tmp_path / "reference"), strict=True):
        _same_run(a, b)


def test_one_run_of_a_population_resumes_alone(tiny, tmp_path):
    from test_reliability import killed_run

    args = [*tiny, "--seeds", "0", "1", "--epoch", "4"]
    killed_run(args, tmp_path, rows=4)
    run = _runs(tmp_path)[1]
    out = run_train(["--resume", str(run)], dict(os.environ))
    assert "resuming at epoch" in out.stdout
    assert (run / "policy.pt").exists() and not (_runs(tmp_path)[0] / "policy.pt").exists()


def test_a_run_that_turns_non_finite_stops_alone(tiny, tmp_path, monkeypatch):
    """Run 1's critic weights set to NaN after the learner is built: it stops at its first
    step with failed.json and no policy; the others finish; the command exits 1 naming it."""
    from micro import population
    from micro.cli.train import train_main

    real_build = population.build_population

    def poisoned(*args, **kwargs):
        agent, gens = real_build(*args, **kwargs)
        with torch.no_grad():
            agent.critics.net.layers[0].weight[2:4] = float("nan")
        return agent, gens

    monkeypatch.setattr("micro.pipeline.build_population", poisoned)
    args = [*tiny, "--seeds", "0", "1", "2", "--logdir", str(tmp_path), "--no_progress"]
    assert train_main(args) == 1
    runs = _runs(tmp_path)
    failed = json.loads((runs[1] / "failed.json").read_text())
    assert failed["step"] == 1 and "non-finite critic_loss" in failed["reason"]
    assert not (runs[1] / "policy.pt").exists()
    assert (runs[0] / "policy.pt").exists() and (runs[2] / "policy.pt").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--algo", "rambo", "--seeds", "0", "1"], "rambo cannot train seeds together"),
        (["--seeds", "0", "1", "--seed", "2"], "give --seed or --seeds, not both"),
        (["--seeds", "0", "-1"], "seed"),
        (["--seeds", "1", "1"], "repeats a seed"),
    ],
)
def test_bad_population_input_is_one_line(tiny, tmp_path, extra, message):
    proc = _train([*tiny, *extra], tmp_path, check=False)
    assert proc.returncode == 1 and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "hopper-medium-v2").exists()  # nothing written


def test_a_sweep_pack_resumes_a_killed_population(tiny, tmp_path):
    """sweep.py --pack_seeds's worker (train_pack, here without Ray) on a killed population's
    runs: resumed together, finished, each run recorded; the same files as an uninterrupted
    population."""
    from test_reliability import killed_run

    from micro.run_dir import RunDir
    from micro.sweep import train_pack

    args = [*tiny, "--seeds", "0", "1", "--epoch", "4"]
    _train(args, tmp_path / "reference")
    killed_run(args, tmp_path / "killed", rows=4)
    runs = _runs(tmp_path / "killed")
    configs = [RunDir(r).read_config() for r in runs]
    threads = torch.get_num_threads()  # as the processes that trained the reference
    results = train_pack(configs, [str(r) for r in runs], threads)
    assert [r["state"] for r in results] == ["finished", "finished"], results
    assert "resuming 2 runs at epoch" in (runs[0] / "train.log").read_text()
    for a, b in zip(runs, _runs(tmp_path / "reference"), strict=True):
        _same_run(a, b)
    again = train_pack(configs, [str(r) for r in runs], threads)  # finished: skipped
    assert [r["seconds"] for r in again] == [0.0, 0.0]
