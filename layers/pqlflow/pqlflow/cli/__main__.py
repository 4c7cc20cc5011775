"""`python -m pqlflow.cli`: the `pqlflow` command (bench scripts run it with the interpreter they run on)."""

import sys

from pqlflow.cli import main

sys.exit(main())
