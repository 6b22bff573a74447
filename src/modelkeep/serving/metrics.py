"""Prometheus metrics in the text exposition format, without a client library.

Counters, gauges and histograms keyed by label tuples; ``render()`` gives the body of
``GET /metrics``. Updates are plain dict operations on the event loop thread (the loader
thread only touches counters under the GIL), cheap enough for every request.

Example::

    m = Metrics()
    m.requests.inc(("rest", "predict", "200"))
    m.latency.observe(("rest", "predict"), 0.0012)
    text = m.render()
"""

from __future__ import annotations

import bisect
from collections import defaultdict

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(str(v))}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Counter:
    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = (), kind: str = "counter"):
        self.name, self.help, self.labels, self.kind = name, help_text, labels, kind
        self.values: dict[tuple[str, ...], float] = defaultdict(float)

    def inc(self, labels: tuple[str, ...] = (), amount: float = 1.0) -> None:
        self.values[labels] += amount

    def set(self, labels: tuple[str, ...], value: float) -> None:
        self.values[labels] = value

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        for key, value in sorted(self.values.items()):
            lines.append(f"{self.name}{_labels(self.labels, key)} {value:g}")
        return lines


class Histogram:
    def __init__(self, name: str, help_text: str, labels: tuple[str, ...], buckets: tuple[float, ...]):
        self.name, self.help, self.labels, self.buckets = name, help_text, labels, buckets
        self.counts: dict[tuple[str, ...], list[int]] = {}
        self.sums: dict[tuple[str, ...], float] = defaultdict(float)

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        counts = self.counts.get(labels)
        if counts is None:
            counts = self.counts[labels] = [0] * (len(self.buckets) + 1)
        counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sums[labels] += value

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for key in sorted(self.counts):
            running = 0
            for bound, count in zip((*self.buckets, float("inf")), self.counts[key]):
                running += count
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                tag = 'le="' + le + '"'
                lines.append(f"{self.name}_bucket{_labels(self.labels, key, tag)} {running}")
            lines.append(f"{self.name}_sum{_labels(self.labels, key)} {self.sums[key]:.9g}")
            lines.append(f"{self.name}_count{_labels(self.labels, key)} {running}")
        return lines


class Metrics:
    """Every metric the server exports."""

    def __init__(self) -> None:
        self.requests = Counter(
            "modelkeep_requests_total", "Requests answered, by API, method and status code.", ("api", "method", "code")
        )
        self.errors = Counter("modelkeep_request_errors_total", "Requests answered with an error, by API and kind.", ("api", "kind"))
        self.latency = Histogram(
            "modelkeep_request_latency_seconds", "Time from request received to answer ready.", ("api", "method"), LATENCY_BUCKETS
        )
        self.batch_size = Histogram("modelkeep_batch_size", "Rows per forward pass (micro-batching).", ("model",), BATCH_BUCKETS)
        self.version_served = Counter("modelkeep_model_version_served", "Version new requests go to.", ("model",), "gauge")
        self.versions_loaded = Counter("modelkeep_model_versions_loaded", "Versions loaded and serving.", ("model",), "gauge")
        self.predictions = Counter("modelkeep_predictions_total", "Predict requests answered, by version.", ("model", "version"))
        self.reloads = Counter("modelkeep_model_loads_total", "Versions loaded, warmed up and swapped in.", ("model",))
        self.rejected = Counter(
            "modelkeep_checkpoints_rejected_total",
            "Checkpoints seen but not served: corrupt, incomplete (may complete later), failing to load.",
            ("model", "reason"),
        )

    def render(self) -> str:
        parts: list[str] = []
        for metric in (
            self.requests, self.errors, self.latency, self.batch_size, self.version_served,
            self.versions_loaded, self.predictions, self.reloads, self.rejected,
        ):
            parts.extend(metric.render())
        return "\n".join(parts) + "\n"


TFS_LATENCY_BUCKETS_US = tuple(float(round(10 * 1.8**i)) for i in range(33))  # TF Serving: 10 µs x 1.8^i


class TFServingMetrics:
    """TF Serving's own metric names, at the path of ``--monitoring_config_file``.

    ``:tensorflow:serving:request_count{model_name,status}`` and
    ``:tensorflow:serving:request_latency{model_name,API,entrypoint}`` (microseconds), as
    TF Serving's Prometheus exporter names ``/tensorflow/serving/request_count`` and
    ``/tensorflow/serving/request_latency``; modelkeep's own metrics follow them.

    Example::

        tfs = TFServingMetrics("/monitoring/prometheus/metrics", own=Metrics())
        tfs.record("half", "predict", "REST", True, 0.0012)
    """

    _API = {"predict": "predict", "classify": "classify", "regress": "regress", "metadata": "GetModelMetadata",
            "status": "GetModelStatus", "multi_inference": "MultiInference"}

    def __init__(self, path: str, own: Metrics | None = None):
        self.path = path
        self.own = own
        self.count = Counter(":tensorflow:serving:request_count", "The total number of requests.", ("model_name", "status"))
        self.latency = Histogram(
            ":tensorflow:serving:request_latency", "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            ("model_name", "API", "entrypoint"), TFS_LATENCY_BUCKETS_US,
        )

    def record(self, model: str, method: str, entrypoint: str, ok: bool, seconds: float) -> None:
        if method in ("status", "unknown"):
            return
        self.count.inc((model, "OK" if ok else "ERROR"))
        if ok:
            self.latency.observe((model, self._API.get(method, method), entrypoint), seconds * 1e6)

    def render(self) -> str:
        lines = self.count.render() + self.latency.render()
        text = "\n".join(lines) + "\n"
        return text + (self.own.render() if self.own is not None else "")
