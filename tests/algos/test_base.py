"""micro/algos/__init__.py and base.py: the registry and the protocol every algorithm follows —
one training state covering all it trains, and the hooks a method that trains its model uses
(checked with a toy one, run through the real pipeline, killed and resumed)."""

from __future__ import annotations

import contextlib
import copy

import torch

from micro import algos
from micro.algos import ALGORITHMS, algorithm_class, penalty_columns
from micro.algos.micro import MICRO
from micro.buffer import Batch, ReplayBuffer
from micro.config import Config, resolve_config
from micro.utils import adam


def test_every_registered_algorithm_is_named_as_registered():
    for name in ALGORITHMS:
        cls = algorithm_class(name)
        assert cls.name == name and cls.title
    assert penalty_columns() == ("uncertainty", "penalty", "rollout_reward_penalty")


def _learner(algo: str = "micro"):
    from micro.dynamics import EnsembleDynamics

    torch.manual_seed(0)
    cfg = Config(algo=algo, hidden_dims=(8,), num_samples=2, epoch=4)
    dyn = EnsembleDynamics(3, 2, [8], n_ensemble=3, n_elites=2, weight_decay=[0, 0])
    return algorithm_class(algo)(cfg, 3, 2, dyn.requires_grad_(False))


def _batch(seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(*(torch.randn(8, w, generator=g) for w in (3, 2, 3, 1)), torch.zeros(8, 1))


def test_training_state_covers_everything_the_learner_trains():
    """Restored into a fresh learner, the state continues exactly: same weights, Adam moments,
    temperature and schedule give the same next updates."""
    for algo in ALGORITHMS:
        a = _learner(algo)
        for i in range(3):
            a.update(_batch(i), 2)
        a.end_epoch()
        state = copy.deepcopy(a.training_state())  # its tensors are the learner's own
        trains = {"dynamics"} if a.trains_model else set()  # RAMBO's model is its own
        assert set(state["optimizers"]) == {"critic", "actor", "alpha", *trains}
        assert set(state["schedulers"]) == {"actor"}
        # a frozen model is saved apart
        assert any(k.startswith("dynamics.") for k in state["networks"]) == a.trains_model
        b = _learner(algo)
        b.load_training_state(state)
        torch.manual_seed(7)
        ma = a.update(_batch(9), 2)
        torch.manual_seed(7)
        mb = b.update(_batch(9), 2)
        assert ma.keys() == mb.keys()
        for k in ma:
            assert torch.equal(ma[k], mb[k]), (algo, k)
        for k, v in a.state_dict().items():
            assert torch.equal(v, b.state_dict()[k]), (algo, k)


class ToyModelTrainer(MICRO):
    """MICRO that also fits its dynamics' means to real data every 10 steps: the shape of an
    adversarial-model method (RAMBO), without its maths."""

    name = "toy"
    title = "a toy method that trains its model"

    def __init__(self, cfg, obs_dim, act_dim, dynamics):
        super().__init__(cfg, obs_dim, act_dim, dynamics)
        self.model_update_freq = 10
        self.dynamics.requires_grad_(True)  # the pipeline hands it over frozen
        self.model_optim = adam(self.dynamics.parameters(), 1e-3)

    def named_optimizers(self):
        return {**super().named_optimizers(), "model": self.model_optim}

    def model_update(self, real: ReplayBuffer, done_fn) -> dict[str, float]:
        batch = real.sample(32)
        mean, _ = self.dynamics(torch.cat([batch.observations, batch.actions], -1))
        target = torch.cat([batch.next_observations - batch.observations, batch.rewards], -1)
        loss = (mean - target).pow(2).mean()
        self.model_optim.zero_grad(set_to_none=True)
        loss.backward()
        self.model_optim.step()
        return {"loss": loss.item()}


def test_a_method_that_trains_its_model_is_checkpointed_and_resumes_exactly(
    hopper_file, tmp_path, monkeypatch
):
    import micro.trainer
    from micro.pipeline import resume, run
    from micro.utils import safe_torch_load

    monkeypatch.setitem(algos.ALGORITHMS, "toy", f"{__name__}:ToyModelTrainer")
    values = {
        "algo": "toy",
        "dataset": str(hopper_file),
        "epoch": 2,
        "step_per_epoch": 20,
        "rollout_freq": 10,
        "rollout_batch_size": 64,
        "eval_episodes": 1,
        "dynamics_max_epochs": 2,
        "hidden_dims": (16,),
        "dynamics_hidden_dims": (16,),
        "dynamics_weight_decay": (0.0, 0.0),
        "device": "cpu",
    }
    cfg = resolve_config("hopper-medium-v2", overrides={**values, "logdir": str(tmp_path / "a")})
    whole = run(cfg, progress=False).run_dir

    real_save = micro.trainer.save_checkpoint

    def save_then_die(path, task, agent, buf, state, writer=None, **kw):
        real_save(path, task, agent, buf, state, None, **kw)
        if state.epoch == 1:
            raise KeyboardInterrupt  # killed right after the first checkpoint

    monkeypatch.setattr(micro.trainer, "save_checkpoint", save_then_die)
    cfg = resolve_config("hopper-medium-v2", overrides={**values, "logdir": str(tmp_path / "b")})
    with contextlib.suppress(KeyboardInterrupt):
        run(cfg, progress=False)
    (killed,) = (tmp_path / "b").glob("*/toy/*")
    monkeypatch.setattr(micro.trainer, "save_checkpoint", real_save)
    resume(killed, progress=False)

    rows = (whole / "progress.csv").read_text()
    assert rows == (killed / "progress.csv").read_text()
    assert "model_loss" in rows.splitlines()[0]  # the hook's metrics are logged
    a = safe_torch_load(whole / "checkpoints" / "last.pt")["learner"]
    b = safe_torch_load(killed / "checkpoints" / "last.pt")["learner"]
    assert "model" in a["optimizers"]
    trained = {k: v for k, v in a["networks"].items() if k.startswith("dynamics.")}
    fitted = safe_torch_load(whole / "dynamics" / "model.pt")
    assert {k.removeprefix("dynamics.") for k in trained} == set(fitted["state_dict"])
    assert any(
        not torch.equal(v, fitted["state_dict"][k.removeprefix("dynamics.")])
        for k, v in trained.items()
    ), "the model was not trained"
    for k, v in a["networks"].items():
        assert torch.equal(v, b["networks"][k]), k
