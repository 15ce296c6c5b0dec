"""What the benchmark scripts share: one error line and exit code 2 for bad input, as the CLI does."""

from __future__ import annotations

import sys
from typing import NoReturn


def die(msg: str) -> NoReturn:
    """Print `msg` (an `error: ...` line) to stderr and exit with code 2."""
    print(msg, file=sys.stderr)
    sys.exit(2)
