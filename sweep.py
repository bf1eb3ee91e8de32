"""Train a grid of (task, algorithm, seed) runs on Ray, resumably, and compare them:

python sweep.py --tasks hopper-medium-v2 walker2d-medium-v2 --algos micro mobile --seeds 0 1 2
"""

import sys

from micro.cli.sweep import sweep_main

if __name__ == "__main__":
    sys.exit(sweep_main())
