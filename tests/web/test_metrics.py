"""The per-message metrics read out exactly as prometheus_client's own would."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from chatsession.web.metrics import Metrics, MinuteSeries


def _lines(text: bytes, prefix: str) -> list[str]:
    return [line for line in text.decode().splitlines() if line.startswith(prefix)]


def test_model_latency_buckets_match_a_prometheus_histogram() -> None:
    metrics = Metrics()
    registry = CollectorRegistry()
    reference = Histogram(
        "chatsession_model_latency_seconds",
        "Time from a chat message to the end of its reply.",
        buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        registry=registry,
    )
    rng = random.Random(5)
    for _ in range(2_000):
        value = rng.choice([0.01, 0.05, 1.0, 60.0, rng.expovariate(2.0), rng.uniform(0, 100)])
        metrics.model_seconds.observe(value)
        reference.observe(value)
    prefix = "chatsession_model_latency_seconds_"
    ours = _lines(metrics.render(), prefix + "bucket") + _lines(metrics.render(), prefix + "count")
    theirs = _lines(generate_latest(registry), prefix + "bucket")
    theirs += _lines(generate_latest(registry), prefix + "count")
    assert ours == theirs
    ours_sum = float(_lines(metrics.render(), prefix + "sum")[0].split()[-1])
    theirs_sum = float(_lines(generate_latest(registry), prefix + "sum")[0].split()[-1])
    assert abs(ours_sum - theirs_sum) < 1e-6 * theirs_sum


def test_messages_are_counted_by_transport() -> None:
    metrics = Metrics()
    for transport in ("websocket", "websocket", "http", "sse"):
        metrics.messages.inc(transport)
    text = metrics.render().decode()
    assert 'chatsession_messages_total{transport="websocket"} 2.0' in text
    assert 'chatsession_messages_total{transport="http"} 1.0' in text
    assert 'chatsession_messages_total{transport="sse"} 1.0' in text


def test_the_last_hour_is_a_fixed_ring_of_minutes() -> None:
    """MinuteSeries keeps 60 minutes, fills quiet minutes with zeros and drops older ones."""
    now = [600.0]
    series = MinuteSeries(clock=lambda: now[0])
    series.now().started += 1
    now[0] += 61
    series.now().ended["timeout"] = 2
    hour = series.last_hour()
    assert len(hour) == 60
    assert [m.started for m in hour[-2:]] == [1, 0]
    assert hour[-1].ended == {"timeout": 2}
    assert hour[-1].start - hour[0].start == 59 * 60
    for _ in range(100):
        now[0] += 60
        series.now().started += 1
    assert [m.started for m in series.last_hour()] == [1] * 60
    assert len(series._ring) == 60
