"""The small-upload benchmark reads the worst loop stall of a round from two scrapes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest

from app.ops.loop_lag import LAG_BUCKETS

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_small_uploads.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_small_uploads", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


bench = _bench()


class FerryMetrics:
    """The loop-lag series as a server exposes them, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.lags = Histogram(
            "ferry_event_loop_lag_seconds", "lag", buckets=LAG_BUCKETS, registry=self.registry
        )
        self.worst = Gauge("ferry_event_loop_lag_max_seconds", "worst", registry=self.registry)

    def record(self, *lags: float) -> None:
        for lag in lags:
            self.lags.observe(lag)

    def scrape(self) -> object:
        return bench.parse_lag(generate_latest(self.registry).decode())


def test_a_stall_that_set_a_new_worst_is_reported_exactly() -> None:
    metrics = FerryMetrics()
    metrics.record(0.001, 0.03)
    metrics.worst.set(0.03)
    before = metrics.scrape()
    metrics.record(0.0004, 0.015, 0.04)
    metrics.worst.set(0.04)

    stall = bench.worst_stall(before, metrics.scrape())

    assert stall == bench.Stall(0.02, 0.05, 0.04)
    assert stall.describe() == "40.0 ms"


def test_a_stall_below_the_old_worst_is_reported_as_its_bucket() -> None:
    metrics = FerryMetrics()
    metrics.record(0.2)
    metrics.worst.set(0.2)
    before = metrics.scrape()
    metrics.record(0.0004, 0.007, 0.003)

    stall = bench.worst_stall(before, metrics.scrape())

    assert stall == bench.Stall(0.005, 0.01, None)
    assert stall.describe() == "5-10 ms"


def test_no_samples_between_scrapes_means_no_stall_to_report() -> None:
    metrics = FerryMetrics()
    metrics.record(0.001)
    snapshot = metrics.scrape()

    assert bench.worst_stall(snapshot, snapshot) is None


def test_a_server_without_the_lag_metric_has_no_snapshot() -> None:
    assert bench.parse_lag("# HELP other x\n# TYPE other counter\nother_total 1.0\n") is None
