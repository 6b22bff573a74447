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
            lines.append(f"{self.name}{_labels(self.labels, key)} {value:.17g}")
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
        self.tfs: TFServingMetrics | None = None  # set when TF Serving's metrics are exported too
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
TFS_EXAMPLE_BUCKETS = tuple(float(2**i) for i in range(15))  # request_example_counts: 1, 2, 4, ..., 2^14
_HTTP_CODE = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 405: "INVALID_ARGUMENT", 413: "RESOURCE_EXHAUSTED"}


class TFServingMetrics:
    """TF Serving's own metrics, at the path of ``--monitoring_config_file``, named as its
    Prometheus exporter names them (``/tensorflow/serving/request_count`` →
    ``:tensorflow:serving:request_count``), with its labels, types and buckets:

    * ``:tensorflow:serving:request_count{model_name,status}``: every REST request and every gRPC
      Predict/Classify/Regress, ``status`` the TF status code name (``OK``, ``NOT_FOUND``, ...);
    * ``:tensorflow:serving:request_latency{model_name,API,entrypoint}`` (µs, answered OK): REST's
      API is the URL's method (``predict``; ``""`` for GET), gRPC's ``Predict``/``Classify``/``Regress``;
    * ``:tensorflow:serving:runtime_latency{model_name,API,runtime}`` (µs, the model's run alone);
    * ``:tensorflow:serving:request_example_counts{model}`` / ``request_example_count_total{model}``:
      tf.Examples per MultiInference request;
    * ``:tensorflow:cc:saved_model:load_attempt_count{model_path,status}`` (``success``/``fail``) and
      ``:tensorflow:cc:saved_model:load_latency{model_path}`` (µs, summed over successful loads).

    modelkeep's own metrics follow them.

    Example::

        tfs = TFServingMetrics("/monitoring/prometheus/metrics", own=Metrics())
        tfs.record("half", "predict", "REST", "OK", 0.0012)
    """

    _GRPC_API = {"predict": "Predict", "classify": "Classify", "regress": "Regress"}

    def __init__(self, path: str, own: Metrics | None = None):
        self.path = path
        self.own = own
        if own is not None:
            own.tfs = self  # the loaders and the inference path reach these through the shared Metrics
        self.count = Counter(":tensorflow:serving:request_count", "The total number of requests.", ("model_name", "status"))
        self.latency = Histogram(
            ":tensorflow:serving:request_latency", "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            ("model_name", "API", "entrypoint"), TFS_LATENCY_BUCKETS_US,
        )
        self.runtime = Histogram(
            ":tensorflow:serving:runtime_latency", "Distribution of wall time (in microseconds) for Tensorflow runtime.",
            ("model_name", "API", "runtime"), TFS_LATENCY_BUCKETS_US,
        )
        self.examples = Histogram(
            ":tensorflow:serving:request_example_counts", "The number of tensorflow.Examples per request.", ("model",),
            TFS_EXAMPLE_BUCKETS,
        )
        self.example_total = Counter(
            ":tensorflow:serving:request_example_count_total", "The total number of tensorflow.Examples.", ("model",)
        )
        self.load_attempts = Counter(
            ":tensorflow:cc:saved_model:load_attempt_count", "The number of times a SavedModel was successfully loaded.",
            ("model_path", "status"),
        )
        self.load_latency = Counter(
            ":tensorflow:cc:saved_model:load_latency", "Latency in microseconds for SavedModels that were successfully loaded.",
            ("model_path",),
        )

    def record(self, model: str, method: str, entrypoint: str, status: str | int, seconds: float) -> None:
        """One request: ``status`` a TF status code name (or an HTTP status, mapped as TF Serving maps it)."""
        if isinstance(status, int):
            status = "OK" if status == 200 else _HTTP_CODE.get(status, "UNKNOWN")
        if entrypoint == "GRPC":
            api = self._GRPC_API.get(method)
            if api is None:  # TF Serving counts gRPC Predict/Classify/Regress only
                return
        else:
            api = method if method in self._GRPC_API else ""
        self.count.inc((model, status))
        if status == "OK":
            self.latency.observe((model, api, entrypoint), seconds * 1e6)

    def record_runtime(self, model: str, method: str, seconds: float) -> None:
        self.runtime.observe((model, self._GRPC_API.get(method, method), "TF1"), seconds * 1e6)

    def record_examples(self, model: str, count: int) -> None:
        self.examples.observe((model,), count)
        self.example_total.inc((model,), count)

    def record_load(self, path: str, ok: bool, seconds: float) -> None:
        self.load_attempts.inc((path, "success" if ok else "fail"))
        if ok:
            self.load_latency.inc((path,), round(seconds * 1e6))

    def render(self) -> str:
        lines: list[str] = []
        for metric in (self.load_attempts, self.load_latency, self.count, self.latency, self.runtime, self.examples,
                       self.example_total):
            lines += metric.render()
        text = "\n".join(lines) + "\n"
        return text + (self.own.render() if self.own is not None else "")
