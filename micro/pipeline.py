"""A training run as a chain of stages, each usable alone:

    load data → fit or load the dynamics → build the learner → train (``micro.trainer``) → files

``run`` starts a new run directory, ``resume`` continues one, ``fit_dynamics_only`` stops after
the dynamics stage so that one fitted model serves every algorithm and seed on a dataset
(``--load_dynamics_path``). ``run_population`` and ``resume_population`` do the same for
several seeds trained together in one process (``micro.population``).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from micro import MicroError
from micro.algos import algorithm_class
from micro.buffer import Batch, ReplayBuffer
from micro.config import Config, config_files_note, config_from_dict, save_config
from micro.data.sources import load_task_data, reload_task_data
from micro.data.types import TaskData, Transitions
from micro.dynamics import (
    FIT_CHECKPOINT,
    EnsembleDynamics,
    copy_saved,
    fit_dynamics,
    read_dynamics_info,
)
from micro.envs import SimSpec, parse_task
from micro.logger import RunLogger
from micro.population import build_population, check_population, population_record
from micro.provenance import record_session
from micro.run_dir import CONFIG_FILE, LOCK_FILE, RunDir, RunState
from micro.trainer import Member, Trainer, TrainResult, model_buffer_for
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
) -> tuple[EnsembleDynamics, float]:
    """Load the model saved in ``source`` if given (refused unless its model.pt has the SHA-256
    ``model_sha256``, when given), else fit one on ``real`` and save it to ``folder``
    (``model.pt`` and ``dynamics.json``, which records the robot, the data's SHA-256 and
    model.pt's). A fit keeps its state in ``folder`` as it goes (``FIT_CHECKPOINT``) and
    continues from it when killed and started again. Returns the model, frozen, on ``real``'s
    device, and the wall seconds of the stage (a fit's summed over every process that worked on
    it)."""
    start = time.time()
    if source is not None:
        check_dynamics_source(source, sim, data_sha256)
        model = EnsembleDynamics.load(source, sim.obs_dim, sim.act_dim, model_sha256)
        model.to(real.device).requires_grad_(False)
        copied = read_dynamics_info(source).get("copied_from")
        origin = f", copied from {copied}" if copied else ""
        print(f"dynamics: loaded from {source} (elites {model.elites.tolist()}{origin})")
        # a fit's state left beside its saved model (stopped between the two writes) is stale
        (Path(folder) / FIT_CHECKPOINT).unlink(missing_ok=True)
        return model, time.time() - start
    model = EnsembleDynamics(
        sim.obs_dim,
        sim.act_dim,
        cfg.dynamics_hidden_dims,
        cfg.n_ensemble,
        cfg.n_elites,
        cfg.dynamics_weight_decay,
    ).to(real.device)
    d = real.all()
    checkpoint = Path(folder) / FIT_CHECKPOINT
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
        checkpoint=checkpoint,
    )
    model.requires_grad_(False)
    model.save(
        folder,
        extra={
            "epochs": result.epochs,
            "holdout_losses": result.holdout_losses,
            "fit_seconds": round(result.seconds, 1),
            "task": cfg.task,
            "robot": sim.robot,
            "dataset_sha256": data_sha256,
        },
    )
    checkpoint.unlink(missing_ok=True)  # after model.pt: a kill in between leaves both
    elite_mse = np.mean([result.holdout_losses[e] for e in result.elites])
    print(
        f"dynamics: {result.epochs} epochs in {result.seconds:.0f}s, elites {result.elites}, "
        f"holdout MSE {elite_mse:.4f}"
    )
    return model, result.seconds


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
    with the same seed are identical; the RNGs are seeded again after the dynamics stage, so
    that the learner starts from the same weights and random stream whether the dynamics were
    fitted or loaded (and as a population's run of that seed does)."""
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

    def log_fit(epoch: int, train_loss: float, holdout_loss: float) -> None:
        logger.dynamics_scalars({"train_loss": train_loss, "holdout_loss": holdout_loss}, epoch)

    sha = data.record.get("dataset_sha256")
    dynamics, seconds = fit_or_load_dynamics(
        cfg, sim, real, saved, source, log_fit, progress, sha, dynamics_sha256
    )
    set_seed(cfg.seed)  # the learner's weights and draws follow from the seed alone
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


def _inputs(cfg: Config, extra_config: dict | None) -> tuple[TaskData, dict]:
    """A new run's data and what its config.yaml records besides the config (the data, and a
    ``--load_dynamics_path`` model's SHA-256), checked before any file is written."""
    data = load_task_data(parse_task(cfg.task), cfg.dataset)
    extra = {**data_record(data), **(extra_config or {})}
    if cfg.load_dynamics_path:
        data_sha = data.record.get("dataset_sha256")
        extra["dynamics_sha256"] = check_saved_dynamics(cfg.load_dynamics_path, data.sim, data_sha)
    return data, extra


def _copy_given_dynamics(cfg: Config, run: RunDir, sha256: str | None) -> None:
    """A ``--load_dynamics_path`` model into the run's ``dynamics/``, refused if it is no longer
    the one checked (SHA-256 ``sha256``)."""
    if cfg.load_dynamics_path and copy_saved(cfg.load_dynamics_path, run.dynamics_dir) != sha256:
        raise MicroError(f"{cfg.load_dynamics_path} changed while it was copied into the run")


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
    device = resolve_device(cfg.device)
    data, extra_config = _inputs(cfg, extra_config)
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
        _copy_given_dynamics(cfg, run, dynamics_sha256)
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


def _population_trainer(
    cfgs: Sequence[Config],
    runs: Sequence[RunDir],
    data: TaskData,
    progress: bool,
    resume: bool,
    dynamics_sha256: str | None = None,
) -> Trainer:
    """``_trainer`` for a population: one dynamics model (the first run's ``dynamics/``, fitted
    or copied there, then copied into the others'), one learner with a run axis, one member per
    run."""
    cfg, sim = cfgs[0], data.sim
    device = resolve_device(cfg.device)
    torch.set_float32_matmul_precision(cfg.matmul_precision)
    real = transitions_to_buffer(data.transitions, device)
    loggers = [RunLogger(r.path, resume=resume) for r in runs]
    first = runs[0].dynamics_dir
    source = first if (first / "model.pt").exists() else None

    def log_fit(epoch: int, train_loss: float, holdout_loss: float) -> None:
        for logger in loggers:
            logger.dynamics_scalars({"train_loss": train_loss, "holdout_loss": holdout_loss}, epoch)

    sha = data.record.get("dataset_sha256")
    dynamics, seconds = fit_or_load_dynamics(
        cfg, sim, real, first, source, log_fit, progress, sha, dynamics_sha256
    )
    start = time.time()
    model_sha = sha256_file(first / "model.pt")
    for run in runs[1:]:
        if not (run.dynamics_dir / "model.pt").exists():
            copy_saved(first, run.dynamics_dir)
        elif sha256_file(run.dynamics_dir / "model.pt") != model_sha:
            raise MicroError(
                f"{run.path} learns from another dynamics model than {runs[0].path}; they are not "
                "one population (resume them one by one)"
            )
    seconds += time.time() - start
    agent, generators = build_population(cfgs, sim, dynamics, device)
    members = [
        Member(c, r, logger, model_buffer_for(c, sim, device), generator=g)
        for c, r, logger, g in zip(cfgs, runs, loggers, generators, strict=True)
    ]
    trainer = Trainer(cfg, None, real, dynamics, agent, None, sim, progress, members)
    trainer.timings["dynamics"] = seconds
    if resume:
        trainer.restore()
    return trainer


def run_population(
    cfg: Config,
    seeds: Sequence[int],
    progress: bool = True,
    extra_config: dict | None = None,
    run_dirs: Sequence[Path] | None = None,
    on_start: Callable[[list[Path]], None] | None = None,
) -> list[TrainResult]:
    """``run`` for several seeds at once: one process, one dataset, one dynamics model, one
    learner with a run axis; each seed an ordinary run directory (``run_dirs`` when given, else
    new ones), ``cfg`` with its seed in its config.yaml."""
    seeds = list(seeds)
    check_population(cfg.algo, seeds)
    device = resolve_device(cfg.device)
    data, extra_config = _inputs(cfg, extra_config)
    set_seed(seeds[0])  # the dynamics fit's
    cfgs = [config_from_dict({**cfg.to_dict(), "seed": seed}) for seed in seeds]
    if run_dirs is None:
        runs = [RunDir.create(cfg.logdir, cfg.task, cfg.algo, seed) for seed in seeds]
    else:
        runs = [RunDir.claim(path) for path in run_dirs]
    record = population_record([r.path for r in runs], seeds)
    with contextlib.ExitStack() as locks:
        for run in runs:
            locks.enter_context(run.writer())
            if run.state() is not RunState.NEW:  # another process claimed it first
                raise MicroError(f"{run.path} is not empty; a new run needs a new folder")
        for c, run in zip(cfgs, runs, strict=True):
            save_config(c, run.config_file, {**extra_config, **record})
            record_session(run.path)
        dynamics_sha256 = extra_config.get("dynamics_sha256")
        _copy_given_dynamics(cfg, runs[0], dynamics_sha256)
        names = "\n".join(f"  {run.path}" for run in runs)
        print(
            f"run directories, trained together as a population of {len(runs)}:\n{names}\n"
            f"algorithm: {cfg.algo}; {config_files_note(cfg)}\n"
            f"{describe(data)}\ndevice: {describe_device(device, cfg)}"
        )
        if on_start is not None:
            on_start([run.path for run in runs])
        trainer = _population_trainer(cfgs, runs, data, progress, False, dynamics_sha256)
        results = trainer.train_all()
    _report_population(results)
    return results


def resume_population(
    run_dirs: Sequence[str | Path],
    device_name: str | None = None,
    progress: bool = True,
    on_start: Callable[[list[Path]], None] | None = None,
) -> list[TrainResult]:
    """Continue the runs of a killed population together, from their last checkpoints (brought
    to one epoch first), exactly as the population would have gone on."""
    runs = [RunDir(path) for path in run_dirs]
    saved = [run.read_config() for run in runs]
    cfgs = [config_from_dict(c) for c in saved]
    if device_name:
        cfgs = [config_from_dict({**c.to_dict(), "device": device_name}) for c in cfgs]
    check_population(cfgs[0].algo, [c.seed for c in cfgs], saved)
    data = reload_task_data(parse_task(cfgs[0].task), saved[0])
    with contextlib.ExitStack() as locks:
        for run in runs:
            locks.enter_context(run.writer())
        kept = [i for i, run in enumerate(runs) if not run.finished and run.failure() is None]
        for i, run in enumerate(runs):
            if i not in kept:
                why = "finished" if run.finished else f"stopped early ({run.failed_file.name})"
                print(f"note: {run.path.name} {why}; resuming the others", file=sys.stderr)
        if not kept:
            raise MicroError("every run named has finished or stopped early; nothing to resume")
        runs, saved, cfgs = ([x[i] for i in kept] for x in (runs, saved, cfgs))
        for run in runs:
            note = record_session(run.path)
            if note:
                print(note, file=sys.stderr)
        if on_start is not None:
            on_start([run.path for run in runs])
        set_seed(cfgs[0].seed)
        trainer = _population_trainer(
            cfgs, runs, data, progress, True, saved[0].get("dynamics_sha256")
        )
        results = trainer.train_all()
    _report_population(results)
    return results


def _report_population(results: Sequence[TrainResult]) -> None:
    for result in results:
        run = RunDir(result.run_dir)
        if result.failed is not None:
            print(f"{run.path.name}: stopped early: {result.failed}")
        elif result.final_eval is not None:
            e = result.final_eval
            print(
                f"{run.path.name}: final return {e.mean:.1f} ± {e.std:.1f}, normalized score "
                f"{e.normalized_mean:.1f} ± {e.normalized_std:.1f}"
            )
    logdir = RunDir(results[0].run_dir).path.parent
    print(f"policies: {logdir}/*/policy.pt\ntensorboard --logdir {logdir}")


def fit_dynamics_only(cfg: Config, out: str | Path, progress: bool = True) -> Path:
    """Stage 2 alone: fit the dynamics on the task's data and save it to ``out`` (a new folder),
    for ``--load_dynamics_path out`` in any number of runs. A killed fit continues when the
    same command is given again (``out`` then holds its unfinished state)."""
    out = Path(out)

    def check_new() -> None:
        if out.exists() and not _unfinished_fit(out):
            raise MicroError(f"{out} exists; choose a new --out folder for the dynamics model")

    check_new()
    device = resolve_device(cfg.device)
    data = load_task_data(parse_task(cfg.task), cfg.dataset)
    out.mkdir(parents=True, exist_ok=True)
    with RunDir(out).writer():  # one process fits into a folder
        check_new()  # again, holding the folder: another process may have finished it
        set_seed(cfg.seed)
        torch.set_float32_matmul_precision(cfg.matmul_precision)
        real = transitions_to_buffer(data.transitions, device)
        print(f"{describe(data)}\ndevice: {describe_device(device, cfg)}")
        sha = data.record.get("dataset_sha256")
        fit_or_load_dynamics(cfg, data.sim, real, out, progress=progress, data_sha256=sha)
        save_config(cfg, out / CONFIG_FILE, data_record(data))  # a dynamics folder, not a run
    print(f"dynamics model: {out}  (use it with --load_dynamics_path {out})")
    return out


def _unfinished_fit(folder: Path) -> bool:
    """Whether ``folder`` holds only what a begun, unfinished ``fit_dynamics_only`` leaves: its
    lock file, its saved state, a temporary file of a write cut short."""
    names = {p.name for p in folder.iterdir() if not p.name.startswith(".")}
    return bool(names) and names <= {LOCK_FILE, FIT_CHECKPOINT}
