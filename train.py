"""Train MICRO (or --algo mobile|mopo):

python train.py --task walker2d-medium-expert-v2 [--key value ...]
"""

import sys

from micro.cli.train import train_main

if __name__ == "__main__":
    sys.exit(train_main())
