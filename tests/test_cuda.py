"""The GPU path: recorded steps against eager ones, and policies moving between devices.

Skipped on machines without CUDA. There, the rest of the suite runs on CUDA as well: the
``device`` fixture adds it to the device-dependent unit tests, and every CLI run uses
``--device auto``, which picks the GPU.
"""

import pytest
import torch
from conftest import only_run_dir, run_eval, run_train

from micro.algos import algorithm_class
from micro.buffer import Batch, ReplayBuffer
from micro.config import Config
from micro.dynamics import EnsembleDynamics
from micro.envs import d4rl_sim
from micro.graphs import GraphedStep
from micro.policy_file import load_policy
from micro.trainer import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")
OBS, ACT = 17, 6  # halfcheetah: no termination, so every rollout row survives


def make_trainer(tmp_path, cuda_graph: bool) -> Trainer:
    """A small trainer on random data: 12 steps an epoch, a rollout every 5 steps whose rows
    grow the model buffer until it holds 5 rollouts, cosine-annealed actor learning rate."""
    cfg = Config(
        task="halfcheetah-medium-v2",
        seed=4,
        epoch=3,
        step_per_epoch=12,
        rollout_freq=5,
        rollout_batch_size=64,
        rollout_length=1,
        model_retain_epochs=5,
        hidden_dims=(32, 32),
        num_samples=4,
        cuda_graph=cuda_graph,
    )
    g = torch.Generator().manual_seed(1)
    n = 500
    data = Batch(
        torch.randn(n, OBS, generator=g),
        torch.rand(n, ACT, generator=g) * 2 - 1,
        torch.randn(n, OBS, generator=g),
        torch.randn(n, 1, generator=g),
        torch.zeros(n, 1),
    )
    real = ReplayBuffer(n, OBS, ACT, CUDA)
    real.add(Batch(*(x.to(CUDA) for x in data.fields())))
    torch.manual_seed(0)
    dynamics = EnsembleDynamics(OBS, ACT, [32, 32], n_ensemble=4, n_elites=3, weight_decay=[0] * 3)
    dynamics = dynamics.requires_grad_(False).to(CUDA)
    agent = algorithm_class(cfg.algo)(cfg, OBS, ACT, dynamics).to(CUDA)
    torch.manual_seed(2)
    return Trainer(cfg, tmp_path, real, dynamics, agent, None, d4rl_sim("halfcheetah"), False)


def test_recorded_steps_compute_what_eager_steps_compute(tmp_path):
    """Three epochs with rollouts between the steps: the recorded run is re-recorded whenever
    the model buffer grows or the learning rate changes, and its metrics and weights equal the
    eager run's, because both consume the same random draws."""
    runs = []
    for graphed in (False, True):
        trainer = make_trainer(tmp_path / str(graphed), graphed)
        means = []
        for _ in range(3):
            means.append(trainer.train_epoch())
            trainer.agent.end_epoch()
        torch.cuda.synchronize()
        runs.append((trainer, means))
    (eager, eager_means), (graphed, graphed_means) = runs
    assert eager.step == eager.eager_step and isinstance(graphed.step, GraphedStep)
    # Steps 0-2 eager; recorded at step 3, after the rollouts at steps 5, 10, 15 and 20 (the
    # buffer grows to 5 x 64 rows) and at the epoch starts 12 and 24 (new actor lr) = 7.
    assert graphed.step.recordings == 7
    assert graphed.model_buffer.size == eager.model_buffer.size == 320
    assert graphed_means == eager_means
    for (name, a), b in zip(
        eager.agent.state_dict().items(), graphed.agent.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def make_population_trainer(tmp_path, cuda_graph: bool, seeds=(4, 5, 6)) -> Trainer:
    """``make_trainer``'s setting for a population of three seeds (micro.population)."""
    from types import SimpleNamespace

    from micro.config import config_from_dict
    from micro.logger import RunLogger
    from micro.population import build_population
    from micro.run_dir import RunDir
    from micro.trainer import Member, model_buffer_for

    single = make_trainer(tmp_path / "template", cuda_graph)
    cfgs = [config_from_dict({**single.cfg.to_dict(), "seed": s}) for s in seeds]
    sim = SimpleNamespace(obs_dim=OBS, act_dim=ACT)
    agent, gens = build_population(cfgs, sim, single.dynamics, CUDA)
    members = []
    for c, g in zip(cfgs, gens, strict=True):
        run = RunDir(tmp_path / f"seed{c.seed}")
        run.path.mkdir(parents=True)
        logger = RunLogger(run.path)
        members.append(Member(c, run, logger, model_buffer_for(c, sim, CUDA), generator=g))
    sim_spec = d4rl_sim("halfcheetah")
    return Trainer(
        cfgs[0], None, single.real, single.dynamics, agent, None, sim_spec, False, members
    )


def test_a_populations_recorded_steps_compute_what_its_eager_steps_compute(tmp_path):
    """The population's step recorded with its runs' generators registered: the same metrics
    and weights as its eager steps, run by run."""
    from micro.graphs import can_record_generators

    if not can_record_generators():
        pytest.skip("this torch cannot register generators with a CUDA graph")
    runs = []
    for graphed in (False, True):
        trainer = make_population_trainer(tmp_path / str(graphed), graphed)
        means = []
        for _ in range(3):
            means.append(trainer.train_population_epoch())
            trainer.agent.end_epoch()
        torch.cuda.synchronize()
        runs.append((trainer, means))
    (eager, eager_means), (graphed, graphed_means) = runs
    assert isinstance(graphed.step, GraphedStep) and graphed.step.recordings > 0
    assert graphed_means == eager_means
    for run in range(3):
        a, b = eager.agent.run_training_state(run), graphed.agent.run_training_state(run)
        for name, tensor in a["networks"].items():
            torch.testing.assert_close(tensor, b["networks"][name], rtol=0, atol=0, msg=name)


def test_recorded_dynamics_fit_equals_the_eager_fit():
    """Four epochs of 16 full batches (recorded) and one shorter batch (eager) each: the same
    losses, elites and weights as the fit without graphs."""
    from micro.dynamics import fit_dynamics

    g = torch.Generator().manual_seed(0)
    n = 1300  # 1040 training rows: 16 batches of 64 and one of 16 per epoch
    data = [torch.randn(n, 5, generator=g), torch.rand(n, 2, generator=g)]
    data += [torch.randn(n, 5, generator=g), torch.randn(n, 1, generator=g)]
    fits = []
    for graphed in (False, True):
        torch.manual_seed(1)
        model = EnsembleDynamics(5, 2, [16, 16], n_ensemble=4, n_elites=3, weight_decay=[1e-4] * 3)
        result = fit_dynamics(
            model.to(CUDA),
            *(x.to(CUDA) for x in data),
            batch_size=64,
            max_epochs=4,
            progress=False,
            generator=torch.Generator(CUDA).manual_seed(2),
            cuda_graph=graphed,
        )
        fits.append((model, result))
    (eager, a), (graphed, b) = fits
    assert (a.train_losses, a.holdout_losses, a.elites) == (
        b.train_losses,
        b.holdout_losses,
        b.elites,
    )
    for (name, x), y in zip(eager.state_dict().items(), graphed.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("trained_on", ["cuda", "cpu"])
def test_a_policy_trained_on_one_device_evaluates_on_the_other(
    trained_on, hopper_file, tiny_config, tmp_path, cli_env
):
    args = ["--task", "hopper-medium-v2", "--dataset", str(hopper_file), "--config"]
    args += [str(tiny_config), "--logdir", str(tmp_path), "--device", trained_on]
    run_train(args, cli_env)
    run = only_run_dir(tmp_path)
    other = "cpu" if trained_on == "cuda" else "cuda"
    on_cpu = load_policy(run / "policy.pt", None, torch.device("cpu"))
    on_cuda = load_policy(run / "policy.pt", None, CUDA)
    obs = torch.randn(64, on_cpu.sim.obs_dim)
    torch.testing.assert_close(
        on_cuda.actor.deterministic(obs.to(CUDA)).cpu(),
        on_cpu.actor.deterministic(obs),
        rtol=1e-5,
        atol=1e-6,
    )
    out = tmp_path / "eval"
    run_eval(
        [
            "--policy_path",
            str(run / "policy.pt"),
            "--choice",
            "clean",
            "--eval_episodes",
            "2",
            "--device",
            other,
            "--out",
            str(out),
        ]
    )
    assert (out / "clean.csv").exists()
