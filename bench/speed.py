"""Speed benchmark on synthetic data at SPEC's defaults.

    python bench/speed.py                  # a table
    python bench/speed.py --json           # one JSON object per line
    python bench/speed.py --device cuda    # on a GPU; steps also timed without CUDA graphs

Cases: the MICRO gradient step (walker2d and hopper sizes; real_ratio 0.05 and 0.5), one model
rollout of 50 000 start states x 5 steps, one dynamics-fitting epoch on 200 000 transitions, and,
as ceilings on this machine, the walker2d step's and the epoch's matrix products alone.
Each reports the median of repeated timings after warm-up, an analytic FLOP count (2 per
multiply-add of every matrix product; backward passes counted as twice the forward), and the
achieved fraction of the float32 matrix-product peak measured in the same run. On CUDA a
step case replays the step as one CUDA graph, as training does (``micro.graphs``); its
``_eager`` twin launches every kernel from Python.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from micro.algos import algorithm_class
from micro.algos.penalized import UNCERTAINTY_CHUNK
from micro.buffer import Batch, ReplayBuffer
from micro.config import MATMUL_PRECISIONS, Config
from micro.dynamics import EnsembleDynamics, fit_dynamics
from micro.envs import termination_fn
from micro.graphs import GraphedStep
from micro.provenance import cpu_model, source_digest
from micro.rollout import model_rollout
from micro.utils import keep_freed_memory

SIZES = {"walker2d": (17, 6), "hopper": (11, 3)}
DEVICE = torch.device("cpu")  # --device; also torch's default device for every tensor made here


def sync() -> None:
    """Wait for the device's queued work (timings on CUDA must include it)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def source_commit() -> str | None:
    """The checkout's commit, with "+changes" if the working tree differs from it."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
        )
    except OSError:
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def median_time(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


_PEAK_TENSORS: list[torch.Tensor] = []  # never freed: see matmul_peak


def matmul_peak() -> float:
    """Best float32 matrix-product rate seen: the fastest of several timings of two sizes (a
    shared VM's speed moves between runs; the best is the fairest ceiling).

    Its matrices are kept alive and products written in place, because freeing blocks this large
    would raise glibc's malloc thresholds and so change how the cases after it run
    (``--default_malloc`` would then not measure the default)."""
    best = 0.0
    for n in (1024, 2048) if DEVICE.type == "cpu" else (4096, 8192):
        a, b, out = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
        _PEAK_TENSORS.extend([a, b, out])
        for _ in range(3):
            torch.mm(a, b, out=out)
        for _ in range(10):
            sync()
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            sync()
            best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def mlp_flops(rows: int, dims: list[int]) -> float:
    return 2.0 * rows * sum(a * b for a, b in itertools.pairwise(dims))


def step_gflop(cfg: Config, obs: int, act: int) -> float:
    b = cfg.batch_size
    n_model = b - int(b * cfg.real_ratio)
    actor = [obs, *cfg.hidden_dims, 2 * act]
    critic = [obs + act, *cfg.hidden_dims, 1]
    dyn = [obs + act, *cfg.dynamics_hidden_dims, 2 * (obs + 1)]
    states = n_model * cfg.n_elites * cfg.num_samples
    uncertainty = (cfg.algo != "mopo") * (
        mlp_flops(n_model, dyn) * cfg.n_elites
        + mlp_flops(states, actor)
        + cfg.num_q_ensemble * mlp_flops(states, critic)
    )
    next_value = mlp_flops(b, actor) + cfg.num_q_ensemble * mlp_flops(b, critic)
    critic_step = 3 * cfg.num_q_ensemble * mlp_flops(b, critic)
    actor_step = 3 * mlp_flops(b, actor) + 2 * cfg.num_q_ensemble * mlp_flops(b, critic)
    return (uncertainty + next_value + critic_step + actor_step) / 1e9


def random_batch(b: int, obs: int, act: int) -> Batch:
    """A batch of ``b`` random transitions (none terminal) for timing updates."""
    return Batch(
        torch.randn(b, obs),
        torch.rand(b, act) * 2 - 1,
        torch.randn(b, obs),
        torch.randn(b, 1),
        torch.zeros(b, 1),
    )


def bench_step(
    env: str,
    real_ratio: float,
    repeats: int,
    warmup_s: float = 0.0,
    algo: str = "micro",
    eager: bool = False,
) -> dict:
    """One gradient step of ``algo`` (MOPO's conservatism is in the rollouts, not the step);
    on CUDA replayed as one CUDA graph unless ``eager``."""
    obs, act = SIZES[env]
    cfg = Config(task=f"{env}-medium-v2", real_ratio=real_ratio, algo=algo)
    torch.manual_seed(0)
    agent = algorithm_class(cfg.algo)(
        cfg, obs, act, EnsembleDynamics(obs, act).requires_grad_(False)
    )
    b = cfg.batch_size
    batch = random_batch(b, obs, act)
    n_real = int(b * real_ratio)
    graphed = DEVICE.type == "cuda" and not eager
    step = (
        GraphedStep(lambda: agent.update(batch, n_real), lambda: None, agent.optimizers())
        if graphed
        else lambda: agent.update(batch, n_real)
    )
    steps = 10 if DEVICE.type == "cpu" else 100
    start = time.perf_counter()
    while time.perf_counter() - start < warmup_s:
        step()
    seconds = median_time(lambda: [step() for _ in range(steps)], repeats) / steps
    suffix = ("" if algo == "micro" else f"_{algo}") + ("_eager" if eager else "")
    return {
        "case": f"step_{env}_real{real_ratio}{suffix}",
        "steps_per_s": 1 / seconds,
        "ms_per_step": 1000 * seconds,
        "gflop": step_gflop(cfg, obs, act),
    }


def _products(members: int, rows: int, dims: list[int], passes: str) -> list[tuple]:
    """Operands for an MLP's matrix products over ``rows`` rows and ``members`` members:
    "f" forward, "i" gradient of each layer's input, "w" gradient of each weight."""
    ops = []
    for a, c in itertools.pairwise(dims):
        x, w, g = (torch.randn(members, *shape) for shape in ((rows, a), (a, c), (rows, c)))
        if "f" in passes:
            ops.append((x, w, torch.empty(members, rows, c)))
        if "i" in passes:
            ops.append((g, w.transpose(1, 2), torch.empty(members, rows, a)))
        if "w" in passes:
            ops.append((x.transpose(1, 2), g, torch.empty(members, a, c)))
    return ops


def step_products(cfg: Config, obs: int, act: int) -> list[tuple]:
    """Every matrix product of one gradient step, at the shapes the step uses (U's states in
    blocks of UNCERTAINTY_CHUNK rows), as (left, right, out) operands for ``torch.bmm``."""
    b, hidden = cfg.batch_size, list(cfg.hidden_dims)
    n_model = b - int(b * cfg.real_ratio)
    actor, critic = [obs, *hidden, 2 * act], [obs + act, *hidden, 1]
    n_states = n_model * cfg.n_elites * cfg.num_samples
    q = cfg.num_q_ensemble
    dyn = [obs + act, *cfg.dynamics_hidden_dims, 2 * (obs + 1)]
    ops = _products(cfg.n_elites, n_model, dyn, "f")
    for start in range(0, n_states, UNCERTAINTY_CHUNK):
        rows = min(UNCERTAINTY_CHUNK, n_states - start)
        ops += _products(1, rows, actor, "f") + _products(q, rows, critic, "f")
    ops += _products(1, b, actor, "f") + _products(q, b, critic, "f")  # V(s')
    ops += _products(q, b, critic, "fiw")  # critic step
    ops += _products(1, b, actor, "fiw") + _products(q, b, critic, "fi")  # actor step
    return ops


def run_products(ops: list[tuple]) -> None:
    for x, w, out in ops:
        torch.bmm(x, w, out=out)


def products_gflop(ops: list[tuple]) -> float:
    return sum(2 * x.shape[0] * x.shape[1] * x.shape[2] * w.shape[2] for x, w, _ in ops) / 1e9


def bench_step_products(repeats: int) -> dict:
    """The ceiling for the walker2d step at real_ratio 0.05: only its matrix products, with
    nothing else: no bias, activation, sampling, loss, optimizer or framework overhead."""
    obs, act = SIZES["walker2d"]
    cfg = Config(task="walker2d-medium-v2", real_ratio=0.05)
    torch.manual_seed(0)
    ops = step_products(cfg, obs, act)
    seconds = median_time(lambda: run_products(ops), repeats * 5)
    return {
        "case": "step_walker2d_real0.05_products_only",
        "steps_per_s": 1 / seconds,
        "ms_per_step": 1000 * seconds,
        "gflop": step_gflop(cfg, obs, act),
    }


def bench_rollout(repeats: int, reward_penalty_coef: float | None = None) -> dict:
    """50 000 start states x 5 model steps through ``model_rollout``, as training makes them;
    with ``reward_penalty_coef`` (MOPO) every member is evaluated for the reward penalty."""
    obs, act = SIZES["walker2d"]
    mopo = (
        {} if reward_penalty_coef is None else {"algo": "mopo", "penalty_coef": reward_penalty_coef}
    )
    cfg = Config(task="walker2d-medium-v2", **mopo)
    torch.manual_seed(0)
    dyn = EnsembleDynamics(obs, act).requires_grad_(False)
    agent = algorithm_class(cfg.algo)(cfg, obs, act, dyn)
    real = torch.randn(200_000, obs) * 0.1
    # An untrained model's next states would fail walker2d's health check at once, leaving
    # nothing to roll out after the first step. Every row must survive all steps for the case
    # to be 50 000 x 5, so rows end only on non-finite states (halfcheetah's rule).
    done = termination_fn("halfcheetah")
    buf = ReplayBuffer(cfg.rollout_batch_size * cfg.rollout_length, obs, act, DEVICE)

    def rollout() -> None:
        buf.ptr = buf.size = 0
        start = real[torch.randint(len(real), (cfg.rollout_batch_size,))]
        step = functools.partial(agent.model_step, dyn)  # MOPO's evaluates every member
        model_rollout(agent.actor, step, start, cfg.rollout_length, done, buf)

    seconds = median_time(rollout, repeats, warmup=1)
    rows = cfg.rollout_batch_size * cfg.rollout_length
    if buf.size != rows:
        raise RuntimeError(f"the rollout simulated {buf.size} rows, not {rows}")
    dyn_dims = [obs + act, *cfg.dynamics_hidden_dims, 2 * (obs + 1)]
    members = 1 if reward_penalty_coef is None else cfg.n_ensemble
    gflop = (
        members * mlp_flops(rows, dyn_dims) + mlp_flops(rows, [obs, *cfg.hidden_dims, 2 * act])
    ) / 1e9
    return {
        "case": "rollout_50000x5" + ("" if reward_penalty_coef is None else "_mopo"),
        "seconds": seconds,
        "gflop": gflop,
        "note": f"flops count {members} dynamics member(s) per row",
    }


def bench_dynamics_epoch(repeats: int, eager: bool = False) -> dict:
    """One fitting epoch; on CUDA its batches are replayed as a recorded graph unless ``eager``."""
    obs, act = SIZES["walker2d"]
    n = 200_000
    torch.manual_seed(0)
    data = [torch.randn(n, obs), torch.rand(n, act) * 2 - 1, torch.randn(n, obs), torch.randn(n, 1)]
    model = EnsembleDynamics(obs, act)

    def epoch() -> None:
        fit_dynamics(model, *data, max_epochs=1, progress=False, cuda_graph=not eager)

    seconds = median_time(epoch, repeats, warmup=1)
    dims = [obs + act, 200, 200, 200, 200, 2 * (obs + 1)]
    n_train = n - 1000
    gflop = (3 * 7 * mlp_flops(n_train, dims) + 7 * mlp_flops(1000, dims)) / 1e9
    case = "dynamics_epoch_200k" + ("_eager" if eager else "")
    return {"case": case, "seconds": seconds, "gflop": gflop}


def bench_dynamics_products(repeats: int) -> dict:
    """The ceiling for the epoch above: only its matrix products (forward, input-gradient and
    weight-gradient products of every layer, 7 members x 256 rows per batch), with nothing else."""
    obs, act = SIZES["walker2d"]
    dims = [obs + act, 200, 200, 200, 200, 2 * (obs + 1)]
    e, b = 7, 256
    n_batches = -(-(200_000 - 1000) // b)
    torch.manual_seed(0)
    ops = _products(e, b, dims, "fiw")
    seconds = median_time(lambda: run_products(ops), repeats * 20) * n_batches
    gflop = 3 * e * mlp_flops(n_batches * b, dims) / 1e9
    return {"case": "dynamics_epoch_products_only", "seconds": seconds, "gflop": gflop}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", nargs="+", help="case prefixes to run, e.g. step rollout")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--default_malloc",
        action="store_true",
        help="leave glibc's malloc settings alone (the CLIs tune them; see keep_freed_memory)",
    )
    parser.add_argument(
        "--matmul_precision",
        choices=MATMUL_PRECISIONS,
        default="highest",
        help="float32 matmul precision for every case (the config key of the same name)",
    )
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda":
        DEVICE = torch.device(
            "cuda", torch.cuda.current_device() if DEVICE.index is None else DEVICE.index
        )
    if DEVICE.type != "cpu":  # a default-device mode adds overhead to every factory call
        torch.set_default_device(DEVICE)
    tuned = False if args.default_malloc else keep_freed_memory()
    peak = matmul_peak()  # always exact float32: the reference the fractions are of
    torch.set_float32_matmul_precision(args.matmul_precision)
    cases = [
        # The first case also absorbs the process's own warm-up (heap growth, clock ramp-up):
        # measured here, the first seconds of stepping run up to 20% slower.
        ("step", lambda: bench_step("walker2d", 0.05, args.repeats, warmup_s=5.0)),
        ("step", lambda: bench_step("walker2d", 0.5, args.repeats)),
        ("step", lambda: bench_step("hopper", 0.05, args.repeats)),
        ("step", lambda: bench_step("hopper", 0.5, args.repeats)),
        ("step", lambda: bench_step_products(args.repeats)),
        ("algo", lambda: bench_step("walker2d", 0.05, args.repeats, algo="mobile")),
        ("algo", lambda: bench_step("walker2d", 0.05, args.repeats, algo="mopo")),
        ("rollout", lambda: bench_rollout(args.repeats)),
        ("rollout", lambda: bench_rollout(args.repeats, reward_penalty_coef=1.0)),
        ("dynamics", lambda: bench_dynamics_epoch(max(1, args.repeats // 2))),
        ("dynamics", lambda: bench_dynamics_products(args.repeats)),
    ]
    if DEVICE.type == "cuda":  # the same steps without CUDA graphs
        cases[1:1] = [
            ("step", lambda: bench_step("walker2d", 0.05, args.repeats, eager=True)),
            ("step", lambda: bench_step("walker2d", 0.5, args.repeats, eager=True)),
        ]
        cases.append(("dynamics", lambda: bench_dynamics_epoch(1, eager=True)))
    header = {
        "case": "matmul_peak",
        "gflop_per_s": peak,
        "threads": torch.get_num_threads(),
        "malloc_tuned": tuned,
        "matmul_precision": args.matmul_precision,
        "torch": torch.__version__,
        "machine": cpu_model(),
        "device": str(DEVICE),
        "gpu": torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else None,
        "source_sha256": source_digest(),
        "commit": source_commit(),
    }
    threads = torch.get_num_threads()
    where = header["gpu"] or f"{threads} threads"
    summary = (
        f"float32 matmul peak: {peak:.0f} GFLOP/s ({where}, torch {torch.__version__}, "
        f"matmul_precision {args.matmul_precision})"
    )
    print(json.dumps(header) if args.json else summary)
    for name, case in cases:
        if args.only and not any(name.startswith(p) for p in args.only):
            continue
        r = case()
        seconds = r.get("seconds", 1 / r.get("steps_per_s", 1))
        r["fraction_of_peak"] = r["gflop"] / seconds / peak
        if args.json:
            print(json.dumps(r), flush=True)
        else:
            speed = (
                f"{r['steps_per_s']:.1f} steps/s" if "steps_per_s" in r else f"{r['seconds']:.2f} s"
            )
            print(
                f"{r['case']:24s} {speed:>14s}  {r['gflop']:7.2f} GFLOP  "
                f"{100 * r['fraction_of_peak']:5.1f}% of peak",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
