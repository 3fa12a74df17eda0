"""The hostile suite as a whole: issue 13's twelve items (60 rows or more) and issue 27's eight classes."""

import importlib
from pathlib import Path

from harness import Attack

TABLES = sorted(
    p.stem for p in Path(__file__).parent.glob("test_hostile_*.py") if p.stem != "test_hostile_coverage"
)


def all_rows():
    rows = []
    for name in TABLES:
        rows += [a for a in getattr(importlib.import_module(name), "ATTACKS", []) if isinstance(a, Attack)]
    return rows


def test_the_tables_cover_every_item_with_at_least_60_rows():
    rows = [a for a in all_rows() if a.issue == 13]
    assert len(rows) >= 60, f"{len(rows)} rows"
    assert {a.item for a in rows} == set(range(1, 13))
    names = [a.name for a in all_rows()]
    assert len(names) == len(set(names)), "row names must be unique"


def test_issue_27s_eight_classes_each_have_at_least_two_rows():
    """Rows of the tables plus the tests that cannot be rows (subprocesses, tmpfs, kill -9), which
    name their class in ``CLASS_TESTS`` of their module."""
    counts = {item: 0 for item in range(1, 9)}
    for attack in all_rows():
        if attack.issue == 27:
            counts[attack.item] += 1
    for name in TABLES:
        for item in getattr(importlib.import_module(name), "CLASS_TESTS", {}).values():
            counts[item] += 1
    assert all(n >= 2 for n in counts.values()), counts
