"""The hostile suite as a whole: at least 60 rows, every one of issue 13's twelve items covered."""

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
    rows = all_rows()
    assert len(rows) >= 60, f"{len(rows)} rows"
    assert {a.item for a in rows} == set(range(1, 13))
    names = [a.name for a in rows]
    assert len(names) == len(set(names)), "row names must be unique"
