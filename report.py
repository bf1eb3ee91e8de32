"""Compare training runs: python report.py RUN_DIR_OR_LOGDIR... [--out DIR]"""

import sys

from micro.cli.report import report_main

if __name__ == "__main__":
    sys.exit(report_main())
