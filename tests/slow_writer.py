"""`python tests/slow_writer.py PAUSE ARGS...`: the qwen-edge command line with its artifact writer slowed by
PAUSE seconds after each layer, so the fault tests can interrupt a write midway (the product has no hook)."""

import sys
import time

pause = float(sys.argv.pop(1))
import qwen_edge.export.writer as writer  # noqa: E402

_progress = writer._progress


def _slow(*args, **kwargs):
    step, close = _progress(*args, **kwargs)

    def slow_step(i):
        step(i)
        time.sleep(pause)
    return slow_step, close


writer._progress = _slow
from qwen_edge.cli import main  # noqa: E402

sys.argv[0] = "qwen-edge"
main()
