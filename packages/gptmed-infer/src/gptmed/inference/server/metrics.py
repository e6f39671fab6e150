"""``GET /metrics``: Prometheus text format (prometheus-client), one registry per app."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["CONTENT_TYPE", "OUTCOMES", "Metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
OUTCOMES = ("ok", "cancelled", "rate_limited", "bad_request", "unauthorized", "shutting_down", "error")
_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class Metrics:
    """The server's counters, gauges and histograms (``gptmed_*``)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "gptmed_requests",
            "Completion requests by outcome (ok, cancelled: the client left, ...)",
            ["outcome"],
            registry=r,
        )
        for outcome in OUTCOMES:
            self.requests.labels(outcome)  # every outcome shows, at 0 until it happens
        self.prompt_tokens = Counter("gptmed_prompt_tokens", "Prompt tokens prefilled", registry=r)
        self.completion_tokens = Counter("gptmed_completion_tokens", "Answer tokens generated", registry=r)
        self.queue_depth = Gauge("gptmed_queue_depth", "Requests waiting for a row of the batch", registry=r)
        self.batch_size = Gauge(
            "gptmed_batch_size", "Requests in the running batch (decoding or prefilling)", registry=r
        )
        self.ttft = Histogram(
            "gptmed_time_to_first_token_seconds",
            "From a request's arrival in the scheduler to its first token",
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "gptmed_time_per_output_token_seconds",
            "Between two tokens of one answer",
            buckets=_TPOT_BUCKETS,
            registry=r,
        )

    def watch(self, queue_depth: Callable[[], float], batch_size: Callable[[], float]) -> None:
        """Read the two gauges from these functions at each scrape."""
        self.queue_depth.set_function(queue_depth)
        self.batch_size.set_function(batch_size)

    def render(self) -> bytes:
        return generate_latest(self.registry)
