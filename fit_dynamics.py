"""Fit the dynamics ensemble once, reuse it in every run on that data:

python fit_dynamics.py --task halfcheetah-medium-v2 --dataset FILE --out DIR
python train.py --task halfcheetah-medium-v2 --dataset FILE --load_dynamics_path DIR [--algo ...]
"""

import sys

from micro.cli.train import fit_dynamics_main

if __name__ == "__main__":
    sys.exit(fit_dynamics_main())
