"""``sweep.py``: train every (task, algorithm, seed) of a grid on Ray — this machine, one GPU box
shared by several runs, or a cluster — resumably, then compare them with ``report.py``'s table.

Each run is an ordinary run directory at a fixed place,
``<logdir>/<task>/<algo>/seed<seed>-<config hash>``, the hash covering the whole resolved config
but the seed, logdir and device, and the content of a ``--dataset`` file. So rerunning a sweep
skips finished runs (``policy.pt``), continues killed ones exactly as ``train.py --resume`` does,
and starts a changed config or dataset in a new folder, never mixed with the old one. A failing
run is recorded with its one-line error and does not stop the others. ``<logdir>/sweep.json``
records the grid and every run's state, path and error, rewritten atomically as runs change.

With ``--pack_seeds`` the seeds of one (task, algorithm) train together as one Ray task, a
population (``micro.population``: one process, batched steps; ``--cpus_per_run`` and
``--gpus_per_run`` are then the population's); each seed is still its own run directory and
entry, resumed and recorded as above. An algorithm without a population form (RAMBO) runs its
seeds one per task.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import socket
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from micro import MicroError
from micro.config import Config, resolve_config
from micro.run_dir import RUN_ONLY_KEYS, RunDir, RunState, without_later_defaults

if TYPE_CHECKING:
    from micro.eval_sweep import EvalSpec
from micro.utils import atomic_write_text

SWEEP_FILE = "sweep.json"
SWEEP_FORMAT = "micro-sweep-v1"


# --- the grid ------------------------------------------------------------------------------------


def config_hash(cfg: Config, data_sha256: str | None = None) -> str:
    """8 hex digits over the resolved config and, for a local dataset, its content: another
    file at the same path is another experiment. The keys that do not change what a run
    computes (``RUN_ONLY_KEYS``) are left out, so the seeds of one experiment share the hash;
    the input paths stay in it, as they always have, so an existing sweep's folders keep their
    names."""
    body = {
        k: v for k, v in without_later_defaults(cfg.to_dict()).items() if k not in RUN_ONLY_KEYS
    }
    if data_sha256 is not None:
        body["dataset_sha256"] = data_sha256
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:8]


def data_sha256(path: str) -> str:
    """The content hash a run records for a local dataset (a file, or a Minari folder)."""
    from micro.data.minari_data import content_sha256, is_minari_dataset
    from micro.utils import sha256_file

    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    if is_minari_dataset(p):
        return content_sha256(p)
    raise MicroError(f"--dataset {path}: no such file or Minari dataset folder")


@dataclass
class RunEntry:
    task: str
    algo: str
    seed: int
    run_dir: str
    config_hash: str
    state: str = "pending"  # pending | running | finished | failed
    error: str | None = None
    final_score: float | None = None
    seconds: float | None = None

    @property
    def name(self) -> str:
        return f"{self.task}/{self.algo}/seed{self.seed}"


def plan(
    tasks: Sequence[str],
    algos: Sequence[str],
    seeds: Sequence[int],
    presets: Sequence[str],
    overrides: dict[str, Any],
    datasets: dict[str, str],
    logdir: Path,
) -> tuple[list[RunEntry], dict[str, Config]]:
    """Every (task, algo, seed) with its resolved config and fixed run directory."""
    entries, configs = [], {}
    hashes = {task: data_sha256(path) for task, path in datasets.items()}
    for task in tasks:
        for algo in algos:
            for seed in seeds:
                values = {**overrides, "algo": algo, "seed": seed, "logdir": str(logdir)}
                if task in datasets:
                    values["dataset"] = datasets[task]
                cfg = resolve_config(task, presets, values)
                digest = config_hash(cfg, hashes.get(task))
                run_dir = logdir / task / algo / f"seed{seed}-{digest}"
                entry = RunEntry(task, algo, seed, str(run_dir), digest)
                entries.append(entry)
                configs[entry.run_dir] = cfg
    return entries, configs


# --- one run, on a Ray worker --------------------------------------------------------------------


class _RunLog(io.TextIOBase):
    """What a run prints, appended to ``<run_dir>/train.log`` once the folder exists (until then
    held in memory)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir, self.held, self.file = run_dir, [], None

    def write(self, text: str) -> int:
        if self.file is None and self.run_dir.is_dir():
            self.file = open(RunDir(self.run_dir).log_file, "a", encoding="utf-8")  # noqa: SIM115
            self.file.write("".join(self.held))
            self.held = []
        if self.file is None:
            self.held.append(text)
        else:
            self.file.write(text)
            self.file.flush()
        return len(text)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        super().close()


class _Tee(io.TextIOBase):
    """Writes to several logs at once (a population's output, to each of its runs' train.log)."""

    def __init__(self, logs: Sequence[io.TextIOBase]) -> None:
        self.logs = list(logs)

    def write(self, text: str) -> int:
        for log in self.logs:
            log.write(text)
        return len(text)

    def close(self) -> None:
        for log in self.logs:
            log.close()
        super().close()


def _started(folder: Path) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    atomic_write_text(RunDir(folder).worker_file, json.dumps(info))


def train_pack(configs: list[dict], run_dirs: list[str], threads: int) -> list[dict]:
    """``train_one`` for the seeds of one experiment trained together (a population): started,
    resumed or skipped per run; one result per run, in order. A run that stopped early on
    non-finite values is failed, the others finished; an error of the population fails all."""
    import torch

    from micro.config import config_from_dict
    from micro.pipeline import resume_population, run_population

    torch.set_num_threads(max(1, threads))
    start = time.time()
    log = _Tee([_RunLog(Path(d)) for d in run_dirs])
    results: dict[str, dict] = {}

    def on_start(folders: list[Path]) -> None:
        for folder in folders:
            _started(folder)

    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            states = {d: RunDir(d).state() for d in run_dirs}
            for d, state in states.items():
                failure = RunDir(d).failure()
                if state == RunState.FINISHED:
                    results[d] = {"state": "finished", "seconds": 0.0, "final_score": None}
                elif failure is not None:
                    results[d] = {"state": "failed", "error": failure["reason"]}
            todo = [d for d in run_dirs if d not in results]
            partial = [d for d in todo if states[d] == RunState.PARTIAL]
            new = [d for d in todo if states[d] == RunState.NEW]
            done = []
            if partial:
                done += resume_population(partial, progress=False, on_start=on_start)
            if new:
                cfgs = [config_from_dict(configs[run_dirs.index(d)]) for d in new]
                done += run_population(
                    cfgs[0],
                    [c.seed for c in cfgs],
                    progress=False,
                    run_dirs=[Path(d) for d in new],
                    on_start=on_start,
                )
        by_path = {Path(d).resolve(): d for d in run_dirs}
        for result in done:
            d = by_path[Path(result.run_dir).resolve()]
            if result.failed is not None:
                results[d] = {"state": "failed", "error": result.failed}
            else:
                score = None if result.final_eval is None else result.final_eval.normalized_mean
                seconds = time.time() - start
                results[d] = {"state": "finished", "seconds": seconds, "final_score": score}
    except MicroError as exc:
        for d in run_dirs:
            results.setdefault(d, {"state": "failed", "error": str(exc)})
    except Exception as exc:  # a bug or a crash inside the population: keep the others going
        log.write(traceback.format_exc())
        first = (str(exc).splitlines() or [""])[0]
        error = f"{type(exc).__name__}: {first}".rstrip(": ")
        for d in run_dirs:
            results.setdefault(d, {"state": "failed", "error": error})
    finally:
        log.close()
    return [results[d] for d in run_dirs]


def train_one(config: dict, run_dir: str, threads: int) -> dict:
    """Train, resume or skip one run; never raises for a run's own failure (the error is
    returned, one line, and the traceback goes to the run's train.log when it has one)."""
    import torch

    from micro.config import config_from_dict
    from micro.pipeline import resume, run

    torch.set_num_threads(max(1, threads))
    path = Path(run_dir)
    start = time.time()
    started = _started
    log = _RunLog(path)
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            state = RunDir(path).state()
            if state == RunState.FINISHED:
                return {"state": "finished", "seconds": 0.0, "final_score": None}
            if state == RunState.PARTIAL:
                result = resume(path, progress=False, on_start=started)
            else:
                result = run(
                    config_from_dict(config), progress=False, run_dir=path, on_start=started
                )
        score = None if result.final_eval is None else result.final_eval.normalized_mean
        return {"state": "finished", "seconds": time.time() - start, "final_score": score}
    except MicroError as exc:
        return {"state": "failed", "error": str(exc), "seconds": time.time() - start}
    except Exception as exc:  # a bug or a crash inside the run: keep the others going
        if path.is_dir():
            log.write(traceback.format_exc())
        first = (str(exc).splitlines() or [""])[0]
        return {"state": "failed", "error": f"{type(exc).__name__}: {first}".rstrip(": ")}
    finally:
        log.close()


# --- the driver ----------------------------------------------------------------------------------


class Record:
    """``sweep.json``: the grid and each run's state, rewritten atomically on every change."""

    def __init__(self, path: Path, grid: dict, entries: list[RunEntry]) -> None:
        self.path, self.grid, self.entries = path, grid, entries
        self.started = datetime.now().isoformat(timespec="seconds")

    def counts(self) -> dict[str, int]:
        out = {"finished": 0, "running": 0, "failed": 0, "pending": 0}
        for e in self.entries:
            out[e.state] += 1
        return out

    def save(self) -> None:
        body = {
            "format": SWEEP_FORMAT,
            "grid": self.grid,
            "started": self.started,
            "updated": datetime.now().isoformat(timespec="seconds"),
            "counts": self.counts(),
            "runs": [asdict(e) for e in self.entries],
        }
        atomic_write_text(self.path, json.dumps(body, indent=1) + "\n")


def _status(record: Record) -> str:
    c = record.counts()
    return (
        f"[{c['finished']} done | {c['running']} running | {c['failed']} failed | "
        f"{c['pending']} pending]"
    )


def _running_line(record: Record, configs: dict[str, Config]) -> str:
    parts = [
        f"{e.name} epoch {RunDir(e.run_dir).epochs_done()}/{configs[e.run_dir].epoch}"
        for e in record.entries
        if e.state == "running"
    ]
    return f"{_status(record)} " + "; ".join(parts)


def _check_resources(ray, cpus: float, gpus: float) -> None:
    total = ray.cluster_resources()
    if gpus > total.get("GPU", 0):
        raise MicroError(
            f"--gpus_per_run {gpus:g} but the Ray cluster has {total.get('GPU', 0):g} GPU(s)"
        )
    if cpus > total.get("CPU", 0):
        raise MicroError(
            f"--cpus_per_run {cpus:g} but the Ray cluster has {total.get('CPU', 0):g} CPU(s)"
        )


def start_ray(address: str | None, num_cpus: int | None):
    try:
        import ray
    except ImportError:
        raise MicroError(
            "sweeps need Ray: pip install -e '.[sweep]' (make install does it)"
        ) from None
    kwargs: dict[str, Any] = {"log_to_driver": False}  # each run prints to its own train.log
    if address and address.startswith("ray://"):
        kwargs["address"] = address  # Ray Client: the cluster's own settings apply
    elif address:
        kwargs.update(address=address, logging_level=logging.WARNING)
    else:
        kwargs.update(include_dashboard=False, logging_level=logging.WARNING)
        if num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
    attempts = CLIENT_ATTEMPTS if address and address.startswith("ray://") else 1
    for attempt in range(1, attempts + 1):
        try:
            ray.init(**kwargs)
            break
        except Exception as exc:  # ConnectionError, RuntimeError, ...
            if attempt < attempts and _client_server_refused(exc):
                # The head's proxy starts a server per client; on a busy head that server can die
                # at start. The next connection gets a new one on another port.
                print(f"sweep: {address} refused the client ({attempt}/{attempts}); retrying")
                _shutdown_quietly(ray)
                time.sleep(CLIENT_RETRY_S)
                continue
            _raise_unreachable(address, exc)
    return ray


# Ray Client: how many times a refused connection is tried, and the pause between tries.
CLIENT_ATTEMPTS = 3
CLIENT_RETRY_S = 5.0


def _client_server_refused(exc: BaseException) -> bool:
    return "Starting Ray client server failed" in str(exc) or isinstance(
        exc, ConnectionAbortedError
    )


def _shutdown_quietly(ray) -> None:
    with contextlib.suppress(Exception):  # a half-made client: nothing to release
        ray.shutdown()


def _raise_unreachable(address: str | None, exc: BaseException):
    """One line saying why Ray could not be started or reached."""
    where = address or "a local Ray instance"
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())[:300]
    hint = ""
    if address and address.startswith("ray://"):
        hint = " (the head's logs/ray_client_server*.err say why the client was refused)"
    raise MicroError(f"cannot start or reach {where}: {type(exc).__name__}: {text}{hint}") from None


def packs(entries: Sequence[RunEntry]) -> list[list[RunEntry]]:
    """``entries`` grouped into the populations ``--pack_seeds`` trains: the seeds of one
    (task, algorithm, config) together, in order; an algorithm without a population form gets
    one group per seed."""
    from micro.algos import algorithm_class

    groups: dict[tuple, list[RunEntry]] = {}
    for e in entries:
        alone = algorithm_class(e.algo).population_refused is not None
        key = (e.task, e.algo, e.config_hash, e.seed if alone else None)
        groups.setdefault(key, []).append(e)
    return list(groups.values())


def execute(
    record: Record,
    configs: dict[str, Config],
    ray,
    cpus_per_run: float,
    gpus_per_run: float,
    max_retries: int,
    status_every: float = 30.0,
    pack_seeds: bool = False,
) -> None:
    """Submit every unfinished run to Ray (with ``pack_seeds``, the seeds of one experiment as
    one population task) and follow them to the end."""
    options = {
        "num_cpus": cpus_per_run,
        "num_gpus": gpus_per_run,
        "max_retries": max_retries,
        "retry_exceptions": False,
    }
    remote = ray.remote(train_one).options(**options, name="micro-train")
    remote_pack = ray.remote(train_pack).options(**options, name="micro-train-seeds")
    pending: dict[Any, list[RunEntry]] = {}
    submitted = time.time()
    todo = []
    for entry in record.entries:
        state = RunDir(entry.run_dir).state()
        if state == RunState.FINISHED:
            entry.state, entry.error = "finished", None
            continue
        todo.append(entry)
        entry.state, entry.error = "pending", None
        verb = "resumes" if state == RunState.PARTIAL else "starts"
        print(f"{entry.name}: {verb} in {entry.run_dir}")
    threads = max(1, int(cpus_per_run))
    for group in packs(todo) if pack_seeds else [[e] for e in todo]:
        if len(group) == 1:
            (entry,) = group
            ref = remote.remote(configs[entry.run_dir].to_dict(), entry.run_dir, threads)
        else:
            group_configs = [configs[e.run_dir].to_dict() for e in group]
            ref = remote_pack.remote(group_configs, [e.run_dir for e in group], threads)
            seeds = " ".join(str(e.seed) for e in group)
            print(f"{group[0].task}/{group[0].algo}: seeds {seeds} train together")
        pending[ref] = group
    record.save()
    print(_status(record), flush=True)
    last_status = time.time()
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=2.0)
        for ref in ready:
            group = pending.pop(ref)
            try:
                results = ray.get(ref)
            except Exception as exc:  # the worker died (killed, pre-empted, out of memory)
                first = (str(exc).strip().splitlines() or [""])[0]
                results = {"state": "failed", "error": f"{type(exc).__name__}: {first}"[:300]}
            if isinstance(results, dict):  # one run's, or a lost worker's for its whole group
                results = [results] * len(group)
            for entry, result in zip(group, results, strict=True):
                _record_result(record, entry, result)
        for entry in (e for group in pending.values() for e in group):
            worker = _worker(Path(entry.run_dir))  # queued runs that a worker has picked up
            if entry.state == "pending" and worker and worker["started"] >= submitted:
                entry.state = "running"
                record.save()
                print(
                    f"{_status(record)} {entry.name}: running (pid {worker['pid']} on "
                    f"{worker['host']})",
                    flush=True,
                )
        if time.time() - last_status >= status_every:
            if any(e.state == "running" for group in pending.values() for e in group):
                print(_running_line(record, configs), flush=True)
            last_status = time.time()


def _record_result(record: Record, entry: RunEntry, result: dict) -> None:
    entry.state = result["state"]
    entry.error = result.get("error")
    entry.final_score = result.get("final_score")
    entry.seconds = result.get("seconds")
    record.save()
    if entry.state == "finished":
        score = "" if entry.final_score is None else f", score {entry.final_score:.1f}"
        print(f"{_status(record)} {entry.name}: finished{score}", flush=True)
    else:
        print(f"{_status(record)} {entry.name}: FAILED: {entry.error}", flush=True)


def _worker(run_dir: Path) -> dict | None:
    try:
        return json.loads(RunDir(run_dir).worker_file.read_text())
    except (OSError, ValueError):
        return None


def report(entries: list[RunEntry], out: Path) -> dict[str, Path]:
    from micro.report import find_runs, write_report

    dirs = [e.run_dir for e in entries if RunDir(e.run_dir).has_logs()]
    if not dirs:
        raise MicroError("no run of the sweep has logged an epoch yet; nothing to report")
    return write_report(find_runs(dirs), out)


# --- robustness of a sweep's policies (sweep.py eval) --------------------------------------------


def eval_one(policy_path: str, spec: dict, device_name: str, threads: int) -> dict:
    """eval.py's sweep (clean, sim2real or attacks; ``EvalSpec.to_dict()``) of one policy, on a
    Ray worker."""
    import torch

    from micro.eval_sweep import EvalSpec, sweep
    from micro.policy_file import load_policy
    from micro.utils import resolve_device

    torch.set_num_threads(max(1, threads))
    try:
        device = resolve_device(device_name)
        policy = load_policy(policy_path, None, device)
        with torch.no_grad():
            rows, keys, episodes = sweep(EvalSpec(**{**spec, "progress": False}), policy, device)
        return {"rows": rows, "keys": keys, "episodes": episodes}
    except MicroError as exc:
        return {"error": str(exc)}


def evaluate_grid(
    logdir: Path,
    spec: EvalSpec,
    out: Path | None = None,
    force: bool = False,
    device: str = "auto",
    address: str | None = None,
    num_cpus: int | None = None,
    cpus_per_run: float = 1.0,
) -> int:
    """eval.py's sweep (``spec``) of every finished policy of the sweep in ``logdir``, as Ray
    tasks; per task, one table and one figure comparing the algorithms under
    ``out/<task>/`` (default ``<logdir>/eval/<task>/``). Returns the number of failed
    policies."""
    import torch

    from micro.envs import parse_task
    from micro.eval_sweep import finish, prepare_out
    from micro.policy_file import load_policy

    logdir = Path(logdir).expanduser().resolve()
    try:
        record = json.loads((logdir / SWEEP_FILE).read_text())
    except (OSError, ValueError):
        raise MicroError(
            f"no readable {SWEEP_FILE} in {logdir}; run sweep.py there first"
        ) from None
    by_task: dict[str, list[str]] = {}
    for r in record["runs"]:
        if (policy := RunDir(r["run_dir"]).policy_file).is_file():
            by_task.setdefault(r["task"], []).append(str(policy))
    if not by_task:
        raise MicroError(f"no finished policy in the sweep {logdir}; run sweep.py to finish it")
    root = Path(out) if out else logdir / "eval"
    files = {t: prepare_out(spec, root / parse_task(t).slug, force) for t in by_task}
    ray = start_ray(address, num_cpus)
    try:
        _check_resources(ray, cpus_per_run, 0.0)
        remote = ray.remote(eval_one).options(num_cpus=cpus_per_run, name="micro-eval")
        threads = max(1, int(cpus_per_run))
        refs = {
            t: [remote.remote(p, spec.to_dict(), device, threads) for p in paths]
            for t, paths in by_task.items()
        }
        results = {t: ray.get(r) for t, r in refs.items()}
    finally:
        ray.shutdown()
    failed = 0
    for task, paths in by_task.items():
        ok = [(p, r) for p, r in zip(paths, results[task], strict=True) if "rows" in r]
        for p, r in zip(paths, results[task], strict=True):
            if "error" in r:
                failed += 1
                print(f"failed: {p}: {r['error']}", file=sys.stderr)
        if not ok:
            continue
        policies = [load_policy(p, task, torch.device("cpu")) for p, _ in ok]
        print(f"{task}: {len(policies)} policies")
        parts, episode_parts = [r["rows"] for _, r in ok], [r["episodes"] for _, r in ok]
        finish(spec, task, policies, parts, episode_parts, ok[0][1]["keys"], files[task])
        for path in files[task].values():
            print(f"wrote {path}")
    return failed


# --- the grid, run ------------------------------------------------------------------------------


def run_grid(
    tasks: Sequence[str],
    algos: Sequence[str],
    seeds: Sequence[int],
    presets: Sequence[str],
    overrides: dict[str, Any],
    datasets: dict[str, str],
    logdir: Path,
    address: str | None = None,
    num_cpus: int | None = None,
    cpus: float = 1.0,
    gpus: float = 0.0,
    max_retries: int = 3,
    status_every: float = 30.0,
    report_only: bool = False,
    pack_seeds: bool = False,
) -> int:
    """Train every (task, algorithm, seed) not finished yet on Ray (``plan``, ``execute``),
    record them in ``<logdir>/sweep.json`` and write the report; returns the number of failed
    runs."""
    entries, configs = plan(tasks, algos, seeds, presets, overrides, datasets, logdir)
    grid = {
        "tasks": tasks,
        "algos": algos,
        "seeds": seeds,
        "datasets": datasets,
        "presets": [str(Path(p).resolve()) for p in presets],
        "overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()},
        "pack_seeds": pack_seeds,
    }
    logdir.mkdir(parents=True, exist_ok=True)
    record = Record(logdir / SWEEP_FILE, grid, entries)
    for entry in entries:  # what is on disk already
        if RunDir(entry.run_dir).state() == RunState.FINISHED:
            entry.state = "finished"
    todo = [e for e in entries if e.state != "finished"]
    print(f"sweep: {len(entries)} runs in {logdir}, {len(entries) - len(todo)} finished before")
    if todo and not report_only:
        ray = start_ray(address, num_cpus)
        try:
            _check_resources(ray, cpus, gpus)
            execute(record, configs, ray, cpus, gpus, max_retries, status_every, pack_seeds)
        finally:
            ray.shutdown()
    else:
        record.save()
    written = report(entries, logdir / "report")
    for path in written.values():
        print(f"wrote {path}")
    failed = [e for e in record.entries if e.state == "failed"]
    for e in failed:
        print(f"failed: {e.name}: {e.error}", file=sys.stderr)
    print(f"record: {record.path}")
    return len(failed)
