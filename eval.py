"""Evaluate a trained policy:

python eval.py --task T --choice {clean,sim2real,attack} --policy_path RUN/policy.pt
"""

import sys

from micro.cli.evaluate import eval_main

if __name__ == "__main__":
    sys.exit(eval_main())
