"""``ferry serve`` keeps the collector off its start-up objects (checked in a fresh
interpreter: freezing the test process's heap would keep every test app alive)."""

from __future__ import annotations

import subprocess
import sys

from app.main import YOUNG_GC_THRESHOLD

PROBE = """
import gc
import app.main
before = gc.get_freeze_count()
app.main.settle_the_heap()
print(before, gc.get_freeze_count(), gc.get_threshold()[0])
"""


def test_settling_the_heap_freezes_what_start_up_built_and_collects_the_young_less_often() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
    ).stdout
    before, frozen, young = (int(field) for field in out.split())
    assert before == 0
    assert frozen > 50_000  # the app's modules: Litestar, SQLAlchemy, Ferry
    assert young == YOUNG_GC_THRESHOLD
