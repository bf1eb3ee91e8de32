"""The probabilistic ensemble dynamics model: fitting, elites, sampling, saving."""

from __future__ import annotations

import itertools
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from micro import MicroError
from micro.graphs import graphed
from micro.nets import EnsembleLinear, Swish, ensemble_linear
from micro.utils import (
    adam,
    atomic_path,
    atomic_torch_save,
    atomic_write_text,
    bar_disable,
    safe_torch_load,
    sha256_file,
    tensor_digest,
)

LOG_INTERVAL_S = 30.0  # without a progress bar (no terminal, --no_progress), a line this often
FIT_CHECKPOINT = "fit_checkpoint.pt"  # an unfinished fit's state, in the folder model.pt goes to
FIT_CHECKPOINT_EVERY_S = 60.0  # a fit given a checkpoint file saves its state this often
FIT_FORMAT = "micro-dynamics-fit-v1"


class EnsembleDynamics(nn.Module):
    """p_e(Δs, r | s, a) = N(μ_e, diag(exp(lv_e))) for members e = 1..E, one batched network.

    Inputs are standardized with ``input_mean``/``input_std``; outputs are the mean and the
    soft-clamped log-variance of (Δobs, reward).
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden_dims: Sequence[int] = (200, 200, 200, 200),
        n_ensemble: int = 7,
        n_elites: int = 5,
        weight_decay: Sequence[float] = (2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4),
    ) -> None:
        super().__init__()
        assert len(weight_decay) == len(hidden_dims) + 1
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.hidden_dims, self.n_ensemble, self.n_elites = tuple(hidden_dims), n_ensemble, n_elites
        self.weight_decay = tuple(weight_decay)
        out_dim = obs_dim + 1
        dims = [obs_dim + act_dim, *hidden_dims, 2 * out_dim]
        self.layers = nn.ModuleList(
            EnsembleLinear(a, b, n_ensemble, init="trunc_normal")
            for a, b in itertools.pairwise(dims)
        )
        self.activation = Swish()
        self.max_logvar = nn.Parameter(torch.full((out_dim,), 0.5))
        self.min_logvar = nn.Parameter(torch.full((out_dim,), -10.0))
        self.register_buffer("input_mean", torch.zeros(obs_dim + act_dim))
        self.register_buffer("input_std", torch.ones(obs_dim + act_dim))
        self.register_buffer("elites", torch.arange(n_elites))

    # --- the network -------------------------------------------------------------------------
    def forward(
        self, inputs: torch.Tensor, members: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw inputs [B, in] or [E, B, in] -> mean, logvar [E, B, obs_dim + 1], for every
        member or only for ``members`` (then E = len(members))."""
        x = (inputs - self.input_mean) / self.input_std
        if members is None:
            params = [(layer.weight, layer.bias) for layer in self.layers]
        else:
            params = self._member_params(members)
        for weight, bias in params[:-1]:
            x = self.activation(ensemble_linear(x, weight, bias))
        mean, logvar = ensemble_linear(x, *params[-1]).chunk(2, dim=-1)
        return mean, self.soft_clamp(logvar)

    def soft_clamp(self, logvar: torch.Tensor) -> torch.Tensor:
        """Keep the log-variance between the learnable bounds, smoothly:
        lv = max − softplus(max − lv), then lv = min + softplus(lv − min)."""
        logvar = self.max_logvar - F.softplus(self.max_logvar - logvar)
        return self.min_logvar + F.softplus(logvar - self.min_logvar)

    def _member_params(self, members: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's weight and bias for ``members`` only.

        For a frozen model (no parameter requires grad) the gathered copies are kept and
        reused while nothing changes: a load writes the parameters in place, which bumps their
        version counters, and so does a new elite set written into ``elites``; ``.to()`` moves
        their data. Any such change, or other tensors, gathers anew. A model being trained
        (fitted, or updated by an algorithm such as RAMBO) is gathered at every call: fused
        Adam writes parameters without bumping their version counters, so a cache could not
        see its steps. (Writes through ``.data`` bypass version counters too.)"""
        if any(p.requires_grad for p in self.parameters()):
            return [(layer.weight[members], layer.bias[members]) for layer in self.layers]
        tensors = [members, *(t for layer in self.layers for t in (layer.weight, layer.bias))]
        versions = [(t._version, t.data_ptr(), t.dtype) for t in tensors]
        cache = getattr(self, "_member_cache", None)
        if (
            cache is not None
            and all(a is b for a, b in zip(cache[0], tensors, strict=True))
            and cache[1] == versions
        ):
            return cache[2]
        params = [(layer.weight[members], layer.bias[members]) for layer in self.layers]
        self._member_cache = (tensors, versions, params)
        return params

    def decay_loss(self) -> torch.Tensor:
        return sum(
            0.5 * wd * layer.weight.pow(2).sum()
            for wd, layer in zip(self.weight_decay, self.layers, strict=True)
        )

    def set_scaler(self, inputs: torch.Tensor) -> None:
        std = inputs.std(0, unbiased=False)
        self.input_mean.copy_(inputs.mean(0))
        self.input_std.copy_(torch.where(std < 1e-12, torch.ones_like(std), std))

    # --- sampling ----------------------------------------------------------------------------
    def elite_mean_std(
        self, obs: torch.Tensor, act: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (next obs, reward) and std of each elite: [n_elites, B, obs_dim + 1]."""
        mean, logvar = self(torch.cat([obs, act], dim=-1), members=self.elites)
        mean = torch.cat([mean[..., :-1] + obs, mean[..., -1:]], dim=-1)
        return mean, (0.5 * logvar).exp()

    def member_forward(
        self, inputs: torch.Tensor, member: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of one member only: [B, obs_dim + 1] each."""
        x = (inputs - self.input_mean) / self.input_std
        for layer in self.layers[:-1]:
            x = self.activation(torch.addmm(layer.bias[member], x, layer.weight[member]))
        last = self.layers[-1]
        mean, logvar = torch.addmm(last.bias[member], x, last.weight[member]).chunk(2, dim=-1)
        return mean, self.soft_clamp(logvar)

    def sample_step(
        self, obs: torch.Tensor, act: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One model step: each row picks an elite uniformly and samples its Gaussian.

        Only the chosen elite is evaluated for each row (rows are grouped by elite), which
        draws from the same distribution as sampling every elite and keeping one.
        Returns next_obs [B, obs_dim] and reward [B, 1].
        """
        n = obs.shape[0]
        inputs = torch.cat([obs, act], dim=-1)
        pick = torch.randint(self.n_elites, (n,), device=obs.device, generator=generator)
        noise = torch.randn(n, self.obs_dim + 1, device=obs.device, generator=generator)
        out = torch.empty(n, self.obs_dim + 1, device=obs.device)
        for j, member in enumerate(self.elites.tolist()):
            rows = torch.nonzero(pick == j).squeeze(1)
            mean, logvar = self.member_forward(inputs[rows], member)
            out[rows] = mean + (0.5 * logvar).exp() * noise[rows]
        return out[:, :-1] + obs, out[:, -1:]

    def sample_step_all_members(
        self, obs: torch.Tensor, act: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``sample_step`` (same draws, same distribution) evaluating every member, for penalties
        that need all of them (MOPO's). Returns next_obs [B, obs_dim], reward [B, 1] and every
        member's log-variance [n_ensemble, B, obs_dim + 1]."""
        n = obs.shape[0]
        pick = torch.randint(self.n_elites, (n,), device=obs.device, generator=generator)
        noise = torch.randn(n, self.obs_dim + 1, device=obs.device, generator=generator)
        mean, logvar = self(torch.cat([obs, act], dim=-1))
        member, rows = self.elites[pick], torch.arange(n, device=obs.device)
        out = mean[member, rows] + (0.5 * logvar[member, rows]).exp() * noise
        return out[:, :-1] + obs, out[:, -1:], logvar

    # --- persistence -------------------------------------------------------------------------
    def meta(self) -> dict:
        return {
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "hidden_dims": list(self.hidden_dims),
            "n_ensemble": self.n_ensemble,
            "n_elites": self.n_elites,
            "weight_decay": list(self.weight_decay),
        }

    def save(self, folder: str | Path, extra: dict | None = None) -> None:
        """``model.pt`` and ``dynamics.json``, which records model.pt's SHA-256 (checked by
        ``load``) beside the sizes, elites and ``extra``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(
            {"meta": self.meta(), "state_dict": self.state_dict()}, folder / "model.pt"
        )
        info = {**self.meta(), "elites": self.elites.tolist(), **(extra or {})}
        info["model_sha256"] = sha256_file(folder / "model.pt")
        atomic_write_text(folder / "dynamics.json", json.dumps(info, indent=2))

    @classmethod
    def load(
        cls, folder: str | Path, obs_dim: int, act_dim: int, sha256: str | None = None
    ) -> EnsembleDynamics:
        """The model saved in ``folder``, refused if model.pt's SHA-256 differs from ``sha256``
        (when given) or from the one dynamics.json records (folders from before it was
        recorded load unchecked), or if a weight is not finite."""
        path = Path(folder) / "model.pt"
        expected = sha256 or read_dynamics_info(folder).get("model_sha256")
        if expected and path.is_file() and sha256_file(path) != expected:
            raise MicroError(
                f"{path} is damaged or was replaced: its SHA-256 is not the {expected[:12]}… "
                "recorded when it was made; restore it (or fit the dynamics again)"
            )
        blob = safe_torch_load(path, "dynamics model")
        meta = blob.get("meta")
        if not isinstance(meta, dict) or "state_dict" not in blob:
            raise MicroError(f"{path} is not a micro dynamics model")
        if (meta["obs_dim"], meta["act_dim"]) != (obs_dim, act_dim):
            raise MicroError(
                f"dynamics model {path} is for observation/action sizes "
                f"{meta['obs_dim']}/{meta['act_dim']}, this task has {obs_dim}/{act_dim}"
            )
        bad = [k for k, v in blob["state_dict"].items() if not torch.isfinite(v).all()]
        if bad:
            raise MicroError(f"dynamics model {path} has non-finite weights ({bad[0]})")
        model = cls(
            obs_dim,
            act_dim,
            meta["hidden_dims"],
            meta["n_ensemble"],
            meta["n_elites"],
            meta["weight_decay"],
        )
        try:
            model.load_state_dict(blob["state_dict"])
        except RuntimeError as exc:
            raise MicroError(
                f"dynamics model {path} does not match its recorded sizes: "
                f"{str(exc).splitlines()[0]}"
            ) from None
        return model


def read_dynamics_info(folder: str | Path) -> dict:
    """A saved model folder's ``dynamics.json``: sizes, elites, holdout losses, model.pt's
    SHA-256 and what it was fitted on (``robot``, ``task``, ``dataset_sha256``; older folders
    lack some). ``{}`` when the file is missing or unreadable: ``model.pt`` alone still loads."""
    try:
        info = json.loads((Path(folder) / "dynamics.json").read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def copy_saved(source: str | Path, folder: str | Path) -> str:
    """Copy a saved model (``model.pt``, ``dynamics.json``) from ``source`` into ``folder``, so
    that a run using it depends on no outside folder; return model.pt's SHA-256 (recorded in
    the copy's dynamics.json, checked whenever it loads)."""
    source, folder = Path(source), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "model.pt") as tmp:
        shutil.copyfile(source / "model.pt", tmp)
    sha = sha256_file(folder / "model.pt")
    info = {**read_dynamics_info(source), "model_sha256": sha, "copied_from": str(source)}
    atomic_write_text(folder / "dynamics.json", json.dumps(info, indent=2))
    return sha


@dataclass
class FitResult:
    epochs: int
    holdout_losses: list[float]  # best holdout MSE per member
    elites: list[int]
    train_losses: list[float]  # per epoch
    holdout_curve: list[float]  # mean holdout MSE of all members per epoch
    seconds: float = 0.0  # wall time of the fit, summed over the processes that worked on it


def gaussian_nll_loss(
    mean: torch.Tensor, logvar: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """Σ_e [ mean((μ−y)²·exp(−lv)) + mean(lv) ] over members e (means over rows and dims)."""
    inv_var = torch.exp(-logvar)
    mse_inv = ((mean - target).pow(2) * inv_var).mean(dim=(1, 2))
    return (mse_inv + logvar.mean(dim=(1, 2))).sum()


@torch.no_grad()
def holdout_mse(
    model: EnsembleDynamics, inputs: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Per-member MSE of the predicted mean: [E]."""
    mean, _ = model(inputs)
    return (mean - targets).pow(2).mean(dim=(1, 2))


def dynamics_optimizer(model: EnsembleDynamics, lr: float) -> torch.optim.Adam:
    """Adam with each layer's weight decay as its L2 term: that adds wd * w to the weight's
    gradient, exactly the gradient of ``decay_loss()`` (0.5 * wd * |w|^2), without a forward and
    backward pass over every weight per batch."""
    groups = [
        {"params": [layer.weight], "weight_decay": wd}
        for wd, layer in zip(model.weight_decay, model.layers, strict=True)
    ]
    rest = [layer.bias for layer in model.layers] + [model.max_logvar, model.min_logvar]
    groups.append({"params": rest, "weight_decay": 0.0})
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    return adam(groups, lr)


def fit_dynamics(
    model: EnsembleDynamics,
    obs: torch.Tensor,
    act: torch.Tensor,
    next_obs: torch.Tensor,
    rewards: torch.Tensor,
    *,
    lr: float = 1e-3,
    batch_size: int = 256,
    holdout_ratio: float = 0.2,
    max_holdout: int = 1000,
    max_epochs_since_update: int = 5,
    max_epochs: int | None = None,
    improvement_threshold: float = 0.01,
    generator: torch.Generator | None = None,
    on_epoch: Callable[[int, float, float], None] | None = None,
    progress: bool = True,
    cuda_graph: bool = True,
    checkpoint: str | Path | None = None,
) -> FitResult:
    """Fit the ensemble by Gaussian NLL with holdout early stopping; keep each member's best
    snapshot and choose the ``n_elites`` members with the lowest holdout MSE as elites.

    With ``checkpoint`` (a file), the fit's whole state (weights, Adam's moments, the holdout
    split, the bootstrap order, each member's best snapshot, the RNG) is saved there every
    ``FIT_CHECKPOINT_EVERY_S`` seconds, and a fit that finds the file continues from it as the
    uninterrupted fit would have (refused if it was begun with other data or settings). The
    caller removes the file once the fitted model is saved.

    On CUDA (unless ``cuda_graph`` is false) each full batch's step is replayed as one recorded
    CUDA graph (``micro.graphs``), reading its rows through a fixed index buffer; it computes
    what the eager step computes. An epoch's last, shorter batch runs eagerly."""
    began = time.monotonic()
    device = obs.device
    inputs = torch.cat([obs, act], dim=-1)
    targets = torch.cat([next_obs - obs, rewards], dim=-1)
    n = inputs.shape[0]
    n_holdout = min(int(n * holdout_ratio), max_holdout)
    if n - n_holdout < 1 or n_holdout < 1:
        raise MicroError(f"too few transitions ({n}) to fit the dynamics model")
    # The generator every draw comes from (the device's default one when none is given): its
    # state is what a checkpoint must carry for the continued fit to draw what this one would.
    rng = generator if generator is not None else _default_generator(device)
    settings = {
        **model.meta(),
        "lr": lr,
        "batch_size": batch_size,
        "holdout_ratio": holdout_ratio,
        "max_holdout": max_holdout,
        "max_epochs_since_update": max_epochs_since_update,
        "max_epochs": max_epochs,
        "improvement_threshold": improvement_threshold,
    }
    saved = None
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        settings["data"] = tensor_digest({"inputs": inputs, "targets": targets})
        saved = _read_fit_checkpoint(checkpoint, settings) if checkpoint.exists() else None
    if saved is None:
        perm = torch.randperm(n, device=device, generator=rng)
    else:
        perm = saved["perm"].to(device)
    train_in, train_tg = inputs[perm[n_holdout:]], targets[perm[n_holdout:]]
    hold_in, hold_tg = inputs[perm[:n_holdout]], targets[perm[:n_holdout]]
    model.set_scaler(train_in)

    n_train, n_members = train_in.shape[0], model.n_ensemble
    optimizer = dynamics_optimizer(model, lr)
    if saved is None:
        # Each member trains on its own bootstrap resample; the order is reshuffled every epoch.
        boot = torch.randint(n_train, (n_members, n_train), device=device, generator=rng)
        best = torch.full((n_members,), float("inf"))
        best_state = {k: v.clone() for k, v in model.state_dict().items()}
        epochs_since_update, epoch = 0, 0
        train_curve, hold_curve = [], []
        earlier_seconds = 0.0
    else:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        boot, best = saved["boot"].to(device), saved["best"]
        best_state = {k: v.to(device) for k, v in saved["best_state"].items()}
        epochs_since_update, epoch = saved["epochs_since_update"], saved["epoch"]
        train_curve, hold_curve = list(saved["train_curve"]), list(saved["holdout_curve"])
        earlier_seconds = saved["seconds"]
        rng.set_state(saved["rng"])
        print(f"dynamics fit: continuing from epoch {epoch} ({checkpoint})", flush=True)
    total = torch.zeros((), device=device)
    last_save = time.monotonic()

    def batch_step(idx: torch.Tensor) -> dict[str, torch.Tensor]:
        mean, logvar = model(train_in[idx])
        loss = gaussian_nll_loss(mean, logvar, train_tg[idx])
        loss = loss + 0.01 * (model.max_logvar.sum() - model.min_logvar.sum())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total.add_(loss.detach())
        return {}

    rows = torch.empty(n_members, batch_size, dtype=torch.long, device=device)  # a full batch
    full_batch: Callable[[], dict[str, torch.Tensor]] = lambda: batch_step(rows)  # noqa: E731
    if device.type == "cuda" and cuda_graph:
        full_batch = graphed(full_batch, lambda: None, [optimizer])
    bar = tqdm(desc="dynamics fit", unit="epoch", disable=bar_disable(progress), leave=False)
    last_line = time.monotonic()
    while True:
        epoch += 1
        order = torch.argsort(torch.rand(n_members, n_train, device=device, generator=rng), dim=1)
        boot = torch.gather(boot, 1, order)
        total.zero_()
        batches = 0
        model.train()
        for start in range(0, n_train, batch_size):
            idx = boot[:, start : start + batch_size]
            if idx.shape[1] == batch_size:
                rows.copy_(idx)
                full_batch()
            else:
                batch_step(idx)
            batches += 1
        model.eval()
        hold = holdout_mse(model, hold_in, hold_tg).cpu()
        with torch.no_grad():  # the decay part of the loss, at the epoch's end weights
            train_loss = float(total) / batches + float(model.decay_loss())
        train_curve.append(train_loss)
        hold_curve.append(float(hold.mean()))
        improved = (best - hold) / best > improvement_threshold
        improved |= torch.isinf(best)
        if improved.any():
            state = model.state_dict()
            for e in torch.nonzero(improved).flatten().tolist():
                best[e] = hold[e]
                for key, value in state.items():
                    if _member_param(key, value, n_members):
                        best_state[key][e] = value[e]
            epochs_since_update = 0
        else:
            epochs_since_update += 1
        if on_epoch is not None:
            on_epoch(epoch, train_loss, float(hold.mean()))
        bar.update(1)
        bar.set_postfix(train=f"{train_loss:.4f}", holdout=f"{float(hold.mean()):.4f}")
        if bar.disable and time.monotonic() - last_line >= LOG_INTERVAL_S:
            last_line = time.monotonic()  # no terminal (a log file): a line now and then
            print(
                f"dynamics fit: epoch {epoch}, train loss {train_loss:.4f}, holdout MSE "
                f"{float(hold.mean()):.4f}, {epochs_since_update} epoch(s) since it improved",
                flush=True,
            )
        if epochs_since_update >= max_epochs_since_update or (
            max_epochs is not None and epoch >= max_epochs
        ):
            break
        if checkpoint is not None and time.monotonic() - last_save >= FIT_CHECKPOINT_EVERY_S:
            blob = {
                "format": FIT_FORMAT,
                "settings": settings,
                "epoch": epoch,
                "epochs_since_update": epochs_since_update,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "perm": perm,
                "boot": boot,
                "best": best,
                "best_state": best_state,
                "train_curve": train_curve,
                "holdout_curve": hold_curve,
                "rng": rng.get_state(),
                "seconds": earlier_seconds + time.monotonic() - began,
            }
            atomic_torch_save(blob, checkpoint)
            last_save = time.monotonic()
    bar.close()
    # Restore each member's best weights; the shared log-variance bounds keep their last value.
    state = model.state_dict()
    for key, value in best_state.items():
        if _member_param(key, value, n_members):
            state[key].copy_(value)
    if not torch.isfinite(best).all():
        largest = float(targets[:, -1].abs().max())
        raise MicroError(
            f"the dynamics fit diverged (holdout MSE {best.tolist()[0]:g} after {epoch} epochs): "
            f"check the data's scale (largest |reward| {largest:g})"
        )
    elites = torch.argsort(best)[: model.n_elites].sort().values
    model.elites.copy_(elites.to(model.elites.device))
    return FitResult(
        epochs=epoch,
        holdout_losses=best.tolist(),
        elites=elites.tolist(),
        train_losses=train_curve,
        holdout_curve=hold_curve,
        seconds=earlier_seconds + time.monotonic() - began,
    )


def _default_generator(device: torch.device) -> torch.Generator:
    """The generator torch draws from on ``device`` when a call is given none."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.default_generators[index]
    return torch.default_generator


def _read_fit_checkpoint(path: Path, settings: dict) -> dict:
    """An unfinished fit's state from ``path``, refused (one line) unless it is one and was
    begun with these ``settings`` (the data's digest among them)."""
    try:
        blob = safe_torch_load(path, "unfinished dynamics fit")
    except MicroError as exc:
        raise MicroError(f"{exc}; delete it to fit afresh") from None
    if blob.get("format") != FIT_FORMAT:
        raise MicroError(f"{path} is not an unfinished micro dynamics fit; delete it to fit afresh")
    theirs = blob.get("settings", {})
    differ = sorted(k for k in settings.keys() | theirs.keys() if settings.get(k) != theirs.get(k))
    if differ:
        what = "other data" if "data" in differ else f"other settings ({', '.join(differ)})"
        raise MicroError(
            f"{path} is an unfinished dynamics fit begun with {what}; continue it with the "
            "data and settings it began with, or delete it to fit afresh"
        )
    return blob


def _member_param(key: str, value: torch.Tensor, n_members: int) -> bool:
    return key.startswith("layers.") and value.dim() == 3 and value.shape[0] == n_members
