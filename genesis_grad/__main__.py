"""`python -m genesis_grad ...`: the `genesis-grad` command."""

import sys

from genesis_grad.cli import main

sys.exit(main())
