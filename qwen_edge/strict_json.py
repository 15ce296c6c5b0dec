"""JSON that every strict parser reads: no NaN, no Infinity, on every path that writes JSON.

Python's `json.dumps` writes `NaN` and `-Infinity` by default, which JavaScript's `JSON.parse`, Go's and
Rust's parsers reject along with the whole document (measured: masked alternatives in `top_logprobs` made
every constrained reply with logprobs unreadable to a JavaScript client). Two ways out, one per kind of writer:

- `dumps`: for protocol output (the server's bodies and events). A non-finite float there is a bug, so it
  raises (allow_nan=False): tests catch the regression instead of a client.
- `dumps_report`: for measurements (`--json`, eval reports), where a figure can be undefined (the standard
  error of a single window): a non-finite float is written as null, which the reports document as
  "not defined for this sample".
"""

from __future__ import annotations

import json
import math
from typing import Any


def dumps(obj: Any, **kw: Any) -> str:
    return json.dumps(obj, allow_nan=False, **kw)


def finite(obj: Any) -> Any:
    """`obj` with every NaN or infinite float replaced by None (containers copied, other values as they are)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    try:  # numpy scalars (a report may carry them): as Python numbers
        import numpy as np
        if isinstance(obj, np.floating):
            return finite(float(obj))
    except ImportError:
        pass
    return obj


def dumps_report(obj: Any, **kw: Any) -> str:
    return json.dumps(finite(obj), allow_nan=False, **kw)
