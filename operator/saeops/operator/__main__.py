"""`python -m saeops.operator` == `saeops operator`."""

import sys

from saeops.operator.cli import run_operator

sys.exit(run_operator(sys.argv[1:]))
