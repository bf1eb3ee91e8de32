"""``make demo``: MICRO end to end, offline, on a dataset made here in the real simulator.

1. collect a hopper-medium dataset with the shipped behavior policy (data/behavior/);
2. fit the dynamics ensemble and train MICRO on a CPU-sized schedule (configs/demo.yaml over
   configs/hopper-medium-v2.yaml — far shorter than the paper's);
3. sweep the trained policy over a reduced sim2real grid and every observation attack;
4. sweep the *shipped* long-run policies (results/<dataset>/{micro,mobile}/seed*/policy.pt, made
   by ``python -m micro.results ship``) the same way, MICRO and MOBILE on one figure, when there
   are any — the short run shows the pipeline, the shipped policies what robustness looks like
   for policies that learned;
5. print behavior vs MICRO normalized scores, wall time per stage, and where the logs and
   plots are, saying which numbers come from which.

Seeds are fixed, so the printed numbers repeat on the same machine.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from micro.config import CONFIG_DIR, resolve_config
from micro.data.d4rl import recorded_return
from micro.datagen.collect import build, default_policy_path, write_dataset
from micro.envs import normalized_score
from micro.run_dir import POLICY_FILE, RunDir

DATA = Path("data/demo/hopper-medium.hdf5")
RESULTS = Path(__file__).resolve().parents[2] / "results"
SHIPPED_ALGOS = ("micro", "mobile")
SHIPPED_EPISODES = "2"
DEMO_STEPS = 50_000
# reduced robustness grids (eval.py's defaults are the published 10 x 10 and 10 budgets)
FRICTION = ["0.5", "1.0", "1.5"]
GRAVITY = ["0.5", "1.0", "2.0", "3.0"]
EPS = ["0", "0.05", "0.1", "0.15", "0.2"]
ROBUSTNESS_EPISODES = "5"
SEED = 0


def collect_demo_data() -> tuple[float, float]:
    """Returns (seconds spent, behavior policy's normalized score on the collected episodes)."""
    start = time.time()
    if DATA.exists():
        print(f"demo dataset: reusing {DATA}")
    else:
        policy = default_policy_path("hopper", "medium")
        print(f"demo dataset: {DEMO_STEPS} steps of {policy} in the simulator -> {DATA}")
        arrays, name = build("medium", "hopper", DEMO_STEPS, SEED, 8, str(policy), None, None, None)
        write_dataset(DATA, arrays, "hopper", name, SEED)
    score = normalized_score("hopper", recorded_return(DATA))
    return time.time() - start, score


def robustness(policy: Path) -> float:
    start = time.time()
    common = [
        "--task",
        "hopper-medium-v2",
        "--policy_path",
        str(policy),
        "--eval_episodes",
        ROBUSTNESS_EPISODES,
        "--no_progress",
    ]
    reduced_sweeps(common)
    return time.time() - start


def reduced_sweeps(common: list[str]) -> None:
    """eval.py's sim2real sweep over the reduced grid and every attack over the reduced
    budgets, with ``common`` arguments (the policies, episodes, output)."""
    from micro.cli.evaluate import eval_main

    for args in (
        ["--choice", "sim2real", "--friction", *FRICTION, "--gravity", *GRAVITY],
        ["--choice", "attack", "--attack_mode", "all", "--eps", *EPS],
    ):
        print()
        if eval_main([*common, *args]):
            raise SystemExit(1)


def shipped_policies(root: Path = RESULTS) -> dict[str, list[Path]]:
    """The shipped MICRO and MOBILE policies, by dataset."""
    out: dict[str, list[Path]] = {}
    for algo in SHIPPED_ALGOS:
        for path in sorted(root.glob(f"*/{algo}/seed*/{POLICY_FILE}")):
            out.setdefault(path.parents[2].name, []).append(path)
    return out


def sweep_shipped(policies: dict[str, list[Path]], out: Path) -> dict[str, list[Path]]:
    """The reduced sim2real grid and every attack over each dataset's shipped policies, MICRO
    and MOBILE on one figure each; returns the figures and their summaries by dataset."""

    figures: dict[str, list[Path]] = {}
    for dataset, paths in policies.items():
        folder = out / dataset
        common = ["--policy_path", *map(str, paths), "--group", "algo", "--out", str(folder)]
        common += ["--eval_episodes", SHIPPED_EPISODES, "--no_progress"]
        reduced_sweeps(common)
        figures[dataset] = [
            folder / f"{stem}{suffix}"
            for stem in ("sim2real", "attack-all")
            for suffix in (".png", "-summary.md")
        ]
    return figures


def shipped_scores(policies: dict[str, list[Path]]) -> list[str]:
    """One line per shipped policy: its recorded final score and steps (run.json)."""
    import json

    from micro.report import LAST_EVALS

    named = []
    for dataset, paths in policies.items():
        for path in paths:
            record_file = path.parent / "run.json"
            if not record_file.is_file():
                continue
            r = json.loads(record_file.read_text())
            step = r.get("final_step", r["steps"])
            named.append((f"{r['algo'].upper()} seed {r['seed']} ({dataset}, {step} steps)", r))
    width = max([38, *(len(name) for name, _ in named)])  # part 1's column, or wider
    lines = []
    for name, r in named:
        status = "shipped" if r.get("finished", True) else "shipped unfinished"
        recent = (
            f"; its last {LAST_EVALS} evaluations {r['last_evals_score']:.1f}"
            if "last_evals_score" in r
            else ""
        )
        lines.append(
            f"{name:{width}s} {r['final_score']:6.1f} ± {r['final_score_std']:.1f} normalized "
            f"({status}, {r['eval_episodes']} episodes{recent})"
        )
    return lines


def main() -> int:
    from micro.cli import guarded
    from micro.pipeline import run

    out: dict = {}

    def demo(_argv: list[str]) -> int:
        out["collect_s"], out["behavior"] = collect_demo_data()
        cfg = resolve_config(
            "hopper-medium-v2",
            presets=[str(CONFIG_DIR / "demo.yaml")],
            overrides={"dataset": str(DATA), "seed": SEED, "logdir": "runs/demo"},
        )
        out["cfg"], out["run"] = cfg, run(cfg)
        out["robustness_s"] = robustness(RunDir(out["run"].run_dir).policy_file)
        start = time.time()
        out["shipped"] = shipped_policies()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out["shipped_figures"] = sweep_shipped(out["shipped"], Path(f"runs/demo/shipped-{stamp}"))
        out["shipped_s"] = time.time() - start
        return 0

    code = guarded(demo, [])
    if code:
        return code
    result, cfg = out["run"], out["cfg"]
    final, t = result.final_eval, result.timings
    steps = cfg.epoch * cfg.step_per_epoch
    print("\n=== demo, part 1: the pipeline on hopper-medium made here, a CPU-sized schedule ===")
    print(f"{'behavior policy (dataset episodes)':38s} {out['behavior']:6.1f} normalized")
    print(
        f"{'MICRO after ' + str(steps) + ' gradient steps':38s} {final.normalized_mean:6.1f} ± "
        f"{final.normalized_std:.1f} normalized ({cfg.eval_episodes} episodes)"
    )
    print(
        f"wall time: collect {out['collect_s']:.0f}s, dynamics fit {t['dynamics']:.0f}s, "
        f"model rollouts {t['rollouts']:.0f}s, MICRO updates {t['updates']:.0f}s, "
        f"evaluation {t['evaluation']:.0f}s, robustness sweeps {out['robustness_s']:.0f}s"
    )
    folder = RunDir(result.run_dir)
    print(f"run directory: {folder.path}")
    plots = f"{folder.eval_dir / 'sim2real.png'}, {folder.eval_dir / 'attack-all.png'}"
    print(f"robustness plots: {plots}")
    print(f"tensorboard --logdir {folder.tb_dir}")
    print("\n=== demo, part 2: the shipped long-run policies (results/), not trained here ===")
    if not out["shipped"]:
        print("no shipped MICRO/MOBILE policy under results/ in this checkout")
        return 0
    for line in shipped_scores(out["shipped"]):
        print(line)
    print(f"robustness sweeps of the shipped policies: {out['shipped_s']:.0f}s")
    for dataset, figures in out["shipped_figures"].items():
        print(f"{dataset}: {figures[0].parent}/ " + ", ".join(f.name for f in figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
