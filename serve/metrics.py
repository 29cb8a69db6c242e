"""`/metrics`: the server's Prometheus metrics (prometheus_client), fed by the engine's stats and the HTTP layer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from .service import Service


class Metrics:
    """Prometheus metrics of one server (its own registry, so several servers can live in one process)."""

    def __init__(self, service: Service):
        self.registry = CollectorRegistry()
        stats = service.engine.stats
        self.queue = Gauge("tasktune_queue_depth", "requests waiting for a batch slot", registry=self.registry)
        self.queue.set_function(lambda: stats.waiting)
        self.batch = Gauge("tasktune_batch_size", "rows decoding in the running batch", registry=self.registry)
        self.batch.set_function(lambda: stats.running)
        Gauge("tasktune_actions_running", "server-side action calls running (--actions), overdue ones included",
              registry=self.registry).set_function(lambda: service.actions.running)
        Gauge("tasktune_actions_overdue", "action calls still running after their request stopped waiting (past "
              "--action-timeout): each holds an --action-workers thread", registry=self.registry
              ).set_function(lambda: service.actions.overdue)
        self.tokens = Counter("tasktune_generated_tokens", "tokens generated", registry=self.registry)
        self.requests = Counter("tasktune_requests", "chat requests by outcome", ["status"], registry=self.registry)
        buckets = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
        self.hist = {name: Histogram(f"tasktune_{name}", help_, buckets=buckets, registry=self.registry)
                     for name, help_ in (("ttft_seconds", "time to first token"),
                                         ("latency_seconds", "request latency, arrival to last token"),
                                         ("step_seconds", "one decode step of the batch"),
                                         ("prefill_seconds", "admitting requests: their prefill, their placement "
                                                             "in the batch and first token"))}
        self._last_tokens = 0
        self._stats = stats
        stats.observers.append(self.observe)

    def observe(self, name: str, value: float) -> None:
        if name in self.hist:
            self.hist[name].observe(value)

    def render(self) -> bytes:
        tokens = self._stats.tokens
        self.tokens.inc(tokens - self._last_tokens)
        self._last_tokens = tokens
        return generate_latest(self.registry)
