"""``make demo``: MICRO end to end, offline, on a dataset made here in the real simulator.

1. collect a hopper dataset with uniform random actions (D4RL layout, D4RL's random recipe);
2. fit the dynamics ensemble and train MICRO on a CPU-sized schedule (configs/demo.yaml);
3. print the final normalized score and where the logs are.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from micro.config import CONFIG_DIR, resolve_config
from micro.data.collect import collect, uniform_policy, write_dataset

DATA = Path("data/demo/hopper-random.hdf5")
DEMO_STEPS = 50_000
SEED = 0


def main() -> int:
    timings = {}
    start = time.time()
    if DATA.exists():
        print(f"demo dataset: reusing {DATA}")
    else:
        print(f"demo dataset: collecting {DEMO_STEPS} random-action hopper steps into {DATA}")
        arrays = collect("hopper", uniform_policy(3, SEED), DEMO_STEPS, seed=SEED)
        write_dataset(DATA, arrays, "hopper", "uniform random actions", SEED)
    timings["collect"] = time.time() - start

    from micro.cli import guarded
    from micro.trainer import run

    cfg = resolve_config(
        "hopper-random-v2",
        presets=[str(CONFIG_DIR / "demo.yaml")],
        overrides={"dataset": str(DATA), "seed": SEED, "logdir": "runs/demo"},
    )

    result = {}

    def train(_argv: list[str]) -> int:
        t = time.time()
        result["run"] = run(cfg)
        timings["train"] = time.time() - t
        return 0

    code = guarded(train, [])
    if code:
        return code
    final = result["run"].final_eval
    print("\n=== demo summary ===")
    print(f"dataset          {DATA} ({DEMO_STEPS} steps, uniform random actions)")
    print(
        f"MICRO score      {final.normalized_mean:.1f} ± {final.normalized_std:.1f} normalized "
        f"(return {final.mean:.1f}, {cfg.eval_episodes} episodes)"
    )
    walls = f"collect {timings['collect']:.0f}s, dynamics + MICRO {timings['train']:.0f}s"
    print(f"wall time        {walls}")
    print(f"run directory    {result['run'].run_dir}")
    print(f"tensorboard      tensorboard --logdir {result['run'].run_dir / 'tb'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
