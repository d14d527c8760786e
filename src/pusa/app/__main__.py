"""`python -m pusa.app [--host ...] [--port ...]`: the studio, as `pusa serve` starts it."""

import sys

from .serve import main

sys.exit(main())
