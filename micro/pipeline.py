"""A training run as a chain of stages, each usable alone:

    load data → fit or load the dynamics → build the learner → train (``micro.trainer``) → files

``run`` starts a new run directory, ``resume`` continues one, ``fit_dynamics_only`` stops after
the dynamics stage so that one fitted model serves every algorithm and seed on a dataset
(``--load_dynamics_path``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from micro import MicroError
from micro.algos import algorithm_class
from micro.buffer import Batch, ReplayBuffer
from micro.config import Config, config_files_note, config_from_dict, save_config
from micro.data.sources import load_task_data, reload_task_data
from micro.data.types import TaskData, Transitions
from micro.dynamics import EnsembleDynamics, copy_saved, fit_dynamics, read_dynamics_info
from micro.envs import SimSpec, parse_task
from micro.logger import RunLogger
from micro.provenance import record_session
from micro.run_dir import CONFIG_FILE, RunDir, RunState
from micro.trainer import Trainer, TrainResult
from micro.utils import resolve_device, set_seed, sha256_file

# --- stage 1: data -------------------------------------------------------------------------------


def transitions_to_buffer(data: Transitions, device: torch.device) -> ReplayBuffer:
    arrays = (data.observations, data.actions, data.next_observations, data.rewards, data.terminals)
    buf = ReplayBuffer(len(data), data.observations.shape[1], data.actions.shape[1], device)
    buf.add(Batch(*(torch.as_tensor(x, device=device) for x in arrays)))
    return buf


def data_record(data: TaskData) -> dict:
    """What config.yaml records about the data a run learned from and where it is evaluated."""
    return {**data.record, "sim": data.sim.to_dict()}


def describe(data: TaskData) -> str:
    r, sim = data.record, data.sim
    name = r.get("dataset_id", r["dataset_file"])
    version = f", minari {r['minari_version']}" if "minari_version" in r else ""
    return (
        f"data: {name} ({len(data.transitions)} transitions{version}), evaluated on "
        f"{sim.env_id}, scores normalized by {sim.ref_source}'s references "
        f"({sim.ref_min:g} / {sim.ref_max:g})"
    )


# --- stage 2: dynamics ------------------------------------------------------------------------


def fit_or_load_dynamics(
    cfg: Config,
    sim: SimSpec,
    real: ReplayBuffer,
    folder: Path,
    source: str | Path | None = None,
    on_epoch: Callable[[int, float, float], None] | None = None,
    progress: bool = True,
    data_sha256: str | None = None,
    model_sha256: str | None = None,
) -> EnsembleDynamics:
    """Load the model saved in ``source`` if given (refused unless its model.pt has the SHA-256
    ``model_sha256``, when given), else fit one on ``real`` and save it to ``folder``
    (``model.pt`` and ``dynamics.json``, which records the robot, the data's SHA-256 and
    model.pt's). Returned frozen, on ``real``'s device."""
    if source is not None:
        check_dynamics_source(source, sim, data_sha256)
        model = EnsembleDynamics.load(source, sim.obs_dim, sim.act_dim, model_sha256)
        model.to(real.device).requires_grad_(False)
        copied = read_dynamics_info(source).get("copied_from")
        origin = f", copied from {copied}" if copied else ""
        print(f"dynamics: loaded from {source} (elites {model.elites.tolist()}{origin})")
        return model
    model = EnsembleDynamics(
        sim.obs_dim,
        sim.act_dim,
        cfg.dynamics_hidden_dims,
        cfg.n_ensemble,
        cfg.n_elites,
        cfg.dynamics_weight_decay,
    ).to(real.device)
    d = real.all()
    start = time.time()
    result = fit_dynamics(
        model,
        d.observations,
        d.actions,
        d.next_observations,
        d.rewards,
        lr=cfg.dynamics_lr,
        batch_size=cfg.dynamics_batch_size,
        holdout_ratio=cfg.dynamics_holdout_ratio,
        max_holdout=cfg.dynamics_max_holdout,
        max_epochs_since_update=cfg.max_epochs_since_update,
        max_epochs=cfg.dynamics_max_epochs,
        on_epoch=on_epoch,
        progress=progress,
        cuda_graph=cfg.cuda_graph,
    )
    model.requires_grad_(False)
    seconds = time.time() - start
    model.save(
        folder,
        extra={
            "epochs": result.epochs,
            "holdout_losses": result.holdout_losses,
            "fit_seconds": round(seconds, 1),
            "task": cfg.task,
            "robot": sim.robot,
            "dataset_sha256": data_sha256,
        },
    )
    elite_mse = np.mean([result.holdout_losses[e] for e in result.elites])
    print(
        f"dynamics: {result.epochs} epochs in {seconds:.0f}s, elites {result.elites}, "
        f"holdout MSE {elite_mse:.4f}"
    )
    return model


def check_dynamics_source(source: str | Path, sim: SimSpec, data_sha256: str | None) -> None:
    """Refuse a saved model fitted on another robot (halfcheetah and walker2d share their
    observation and action sizes, so the sizes alone cannot tell); note one fitted on other data
    of this robot, a legitimate experiment but rarely the intended one."""
    info = read_dynamics_info(source)
    robot = info.get("robot")
    if robot is None and isinstance(info.get("task"), str):  # folders from before "robot"
        try:
            robot = parse_task(info["task"]).env
        except MicroError:
            robot = None
    if robot is not None and robot != sim.robot:
        raise MicroError(
            f"the dynamics model in {source} was fitted on {robot} data ({info.get('task')}), "
            f"not {sim.robot}; fit one for this task (fit_dynamics.py) or drop --load_dynamics_path"
        )
    fitted_on = info.get("dataset_sha256")
    if fitted_on and data_sha256 and fitted_on != data_sha256:
        print(
            f"note: the dynamics model in {source} was fitted on other data (SHA-256 "
            f"{fitted_on[:12]}…) than this run learns from ({data_sha256[:12]}…)",
            file=sys.stderr,
        )


def check_saved_dynamics(source: str | Path, sim: SimSpec, data_sha256: str | None) -> str:
    """Check a ``--load_dynamics_path`` folder before a run is made from it (the robot, the
    file's integrity, its sizes); return its model.pt's SHA-256."""
    check_dynamics_source(source, sim, data_sha256)
    EnsembleDynamics.load(source, sim.obs_dim, sim.act_dim)
    return sha256_file(Path(source) / "model.pt")


def describe_device(device: torch.device, cfg: Config) -> str:
    """``cuda:0 (NVIDIA H100 80GB HBM3), CUDA graphs on``; ``cpu`` on the CPU."""
    if device.type != "cuda":
        return str(device)
    graphs = "on" if cfg.cuda_graph else "off"
    return f"{device} ({torch.cuda.get_device_name(device)}), CUDA graphs {graphs}"


def _trainer(
    cfg: Config,
    run_dir: Path,
    data: TaskData,
    progress: bool,
    resume: bool,
    dynamics_sha256: str | None = None,
) -> Trainer:
    """Stages 2 and 3 into a ready trainer. The dynamics come from the run's own ``dynamics/``
    when it has one (a model given by ``--load_dynamics_path`` is copied there when the run
    starts; ``dynamics_sha256``, recorded in config.yaml then, is checked), else they are fitted
    into it. The RNG order is fixed (dynamics fit, then network initialisation) so that runs
    with the same seed are identical."""
    sim = data.sim
    device = resolve_device(cfg.device)
    torch.set_float32_matmul_precision(cfg.matmul_precision)  # process-wide, like the CLI
    real = transitions_to_buffer(data.transitions, device)
    logger = RunLogger(run_dir, resume=resume)
    saved = RunDir(run_dir).dynamics_dir
    source = saved if (saved / "model.pt").exists() else None
    if source is None and resume and cfg.load_dynamics_path:  # runs from before the copy
        source = cfg.load_dynamics_path
        print(
            f"note: this run predates copying its dynamics into the run; it reads them from "
            f"{source}, unverified",
            file=sys.stderr,
        )
    start = time.time()

    def log_fit(epoch: int, train_loss: float, holdout_loss: float) -> None:
        logger.dynamics_scalars({"train_loss": train_loss, "holdout_loss": holdout_loss}, epoch)

    sha = data.record.get("dataset_sha256")
    dynamics = fit_or_load_dynamics(
        cfg, sim, real, saved, source, log_fit, progress, sha, dynamics_sha256
    )
    seconds = time.time() - start
    agent = algorithm_class(cfg.algo)(cfg, sim.obs_dim, sim.act_dim, dynamics).to(device)
    trainer = Trainer(cfg, run_dir, real, dynamics, agent, logger, sim, progress)
    trainer.timings["dynamics"] = seconds
    if resume and trainer.checkpoint_path.exists():
        trainer.restore()
    return trainer


def _report(result: TrainResult) -> None:
    if result.final_eval is not None:
        e = result.final_eval
        print(
            f"final: return {e.mean:.1f} ± {e.std:.1f}, normalized score "
            f"{e.normalized_mean:.1f} ± {e.normalized_std:.1f}"
        )
    run = RunDir(result.run_dir)
    print(f"policy: {run.policy_file}\ntensorboard --logdir {run.tb_dir}")


def run(
    cfg: Config,
    progress: bool = True,
    extra_config: dict | None = None,
    run_dir: Path | None = None,
    on_start: Callable[[Path], None] | None = None,
) -> TrainResult:
    """Everything ``train.py`` does, in order, validating input before writing any file. The run
    goes to ``run_dir`` when given (a sweep's fixed place), else to a new timestamped folder;
    ``on_start(run_dir)`` is called once it holds its config.yaml."""
    task = parse_task(cfg.task)
    device = resolve_device(cfg.device)
    data = load_task_data(task, cfg.dataset)
    extra_config = {**data_record(data), **(extra_config or {})}
    if cfg.load_dynamics_path:
        data_sha = data.record.get("dataset_sha256")
        model_sha = check_saved_dynamics(cfg.load_dynamics_path, data.sim, data_sha)
        extra_config["dynamics_sha256"] = model_sha
    set_seed(cfg.seed)
    if run_dir is None:
        run = RunDir.create(cfg.logdir, cfg.task, cfg.algo, cfg.seed)
    else:
        run = RunDir.claim(run_dir)
    with run.writer():
        if run.state() is not RunState.NEW:  # another process claimed it first
            raise MicroError(f"{run.path} is not empty; a new run needs a new folder")
        save_config(cfg, run.config_file, extra_config)
        record_session(run.path)
        dynamics_sha256 = extra_config.get("dynamics_sha256")
        if cfg.load_dynamics_path and copy_saved(cfg.load_dynamics_path, run.dynamics_dir) != (
            dynamics_sha256
        ):
            raise MicroError(f"{cfg.load_dynamics_path} changed while it was copied into the run")
        print(
            f"run directory: {run.path}\nalgorithm: {cfg.algo}; {config_files_note(cfg)}\n"
            f"{describe(data)}\ndevice: {describe_device(device, cfg)}"
        )
        if on_start is not None:
            on_start(run.path)
        trainer = _trainer(cfg, run.path, data, progress, False, dynamics_sha256)
        result = trainer.train()
    _report(result)
    return result


def resume(
    run_dir: str | Path,
    device_name: str | None = None,
    progress: bool = True,
    on_start: Callable[[Path], None] | None = None,
) -> TrainResult:
    """Continue a killed run from its last checkpoint (or from its start if it has none)."""
    run = RunDir(run_dir)
    run_dir = run.path
    saved = run.read_config()
    cfg = config_from_dict(saved)  # runs from before `algo` existed are MICRO runs
    if device_name:
        cfg = config_from_dict({**cfg.to_dict(), "device": device_name})
    if run.finished:  # checked again under the lock
        raise MicroError(f"{run_dir} already finished (policy.pt exists); start a new run instead")
    data = reload_task_data(parse_task(cfg.task), saved)
    with run.writer():
        if run.finished:
            raise MicroError(
                f"{run_dir} already finished (policy.pt exists); start a new run instead"
            )
        note = record_session(run_dir)
        if note:
            print(note, file=sys.stderr)
        if on_start is not None:
            on_start(run_dir)
        set_seed(cfg.seed)
        trainer = _trainer(cfg, run_dir, data, progress, True, saved.get("dynamics_sha256"))
        result = trainer.train()
    _report(result)
    return result


def fit_dynamics_only(cfg: Config, out: str | Path, progress: bool = True) -> Path:
    """Stage 2 alone: fit the dynamics on the task's data and save it to ``out`` (a new folder),
    for ``--load_dynamics_path out`` in any number of runs."""
    out = Path(out)
    if out.exists():
        raise MicroError(f"{out} exists; choose a new --out folder for the dynamics model")
    device = resolve_device(cfg.device)
    data = load_task_data(parse_task(cfg.task), cfg.dataset)
    set_seed(cfg.seed)
    torch.set_float32_matmul_precision(cfg.matmul_precision)
    real = transitions_to_buffer(data.transitions, device)
    print(f"{describe(data)}\ndevice: {describe_device(device, cfg)}")
    sha = data.record.get("dataset_sha256")
    fit_or_load_dynamics(cfg, data.sim, real, out, progress=progress, data_sha256=sha)
    save_config(cfg, out / CONFIG_FILE, data_record(data))  # a dynamics folder, not a run
    print(f"dynamics model: {out}  (use it with --load_dynamics_path {out})")
    return out
