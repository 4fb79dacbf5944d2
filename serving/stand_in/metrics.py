"""Request metrics in Prometheus' text format, with TF Serving's metric names.

`:tensorflow:serving:request_count` (counter by model, API and status) and
`:tensorflow:serving:request_latency` (histogram in microseconds by model, API and entrypoint),
served at `/monitoring/prometheus/metrics` on the REST port.
"""

import bisect
import threading
from collections import defaultdict

BUCKETS_US = tuple(10 * 1.8 ** k for k in range(33))  # 10 us .. ~1.6e9 us, as TF Serving's


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self._count = defaultdict(int)
        self._latency = defaultdict(lambda: [0] * (len(BUCKETS_US) + 1))
        self._sum = defaultdict(float)

    def record(self, model: str, api: str, entrypoint: str, status: str, seconds: float):
        micros = seconds * 1e6
        with self._lock:
            self._count[(model, status)] += 1
            key = (model, api, entrypoint)
            self._latency[key][bisect.bisect_left(BUCKETS_US, micros)] += 1
            self._sum[key] += micros

    def prometheus(self) -> str:
        lines = ["# TYPE :tensorflow:serving:request_count counter"]
        with self._lock:
            for (model, status), count in sorted(self._count.items()):
                lines.append(f':tensorflow:serving:request_count{{model_name="{model}",'
                             f'status="{status}"}} {count}')
            lines.append("# TYPE :tensorflow:serving:request_latency histogram")
            for (model, api, entry), counts in sorted(self._latency.items()):
                labels = f'model_name="{model}",API="{api}",entrypoint="{entry}"'
                total = 0
                for bound, count in zip(BUCKETS_US + (float("inf"),), counts):
                    total += count
                    le = "+Inf" if bound == float("inf") else f"{bound:g}"
                    lines.append(f':tensorflow:serving:request_latency_bucket{{{labels},'
                                 f'le="{le}"}} {total}')
                lines.append(f":tensorflow:serving:request_latency_sum{{{labels}}} "
                             f"{self._sum[(model, api, entry)]:g}")
                lines.append(f":tensorflow:serving:request_latency_count{{{labels}}} {total}")
        return "\n".join(lines) + "\n"
