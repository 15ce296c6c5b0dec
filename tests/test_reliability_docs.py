"""docs/reliability.md lists every case the bad-input suite checks: the table and the suite cannot drift."""

from pathlib import Path

import test_bad_input as suite

DOC = (Path(__file__).resolve().parent.parent / "docs" / "reliability.md").read_text(encoding="utf-8")


def test_every_case_is_in_the_table():
    ids = [c[0] for c in suite.CLI_CASES] + [c[0] for c in suite.API_CASES]
    missing = [i for i in ids if f"| `{i}` |" not in DOC]
    assert not missing, f"add these to docs/reliability.md: {missing}"
    listed = DOC.count("\n| `")
    assert listed == len(ids), f"the table has {listed} rows, the suite {len(ids)} cases"
