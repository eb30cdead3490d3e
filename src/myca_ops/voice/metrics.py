"""The batched server's Prometheus series (its /metrics), the GPU's own read at each scrape."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from myca_ops.voice.gpu import GpuCollector, Gpus


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        buckets = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.15, 0.2, 0.4)
        self.tick = Histogram(
            "myca_moshi_tick_seconds", "One model tick, per stage", ["stage"], buckets=buckets, registry=r
        )
        self.frames = Counter("myca_moshi_frames", "80 ms frames stepped", registry=r)
        self.late = Counter(
            "myca_moshi_frames_late", "Frames answered more than 80 ms after their audio was complete", registry=r
        )
        self.batch = Histogram(
            "myca_moshi_tick_batch", "Slots stepped per tick", buckets=(1, 2, 4, 8, 16, 32), registry=r
        )
        self.slots_used = Gauge("myca_moshi_slots_in_use", "Slots holding a session", registry=r)
        self.slots_total = Gauge("myca_moshi_slots", "Slots this server has", registry=r)
        self.sessions = Counter("myca_moshi_sessions", "Sessions by outcome", ["outcome"], registry=r)
        self.handshake = Histogram(
            "myca_moshi_handshake_seconds",
            "From a slot taken to the handshake byte, by how the prompt was made",
            ["prompt"],
            buckets=(0.01, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10),
            registry=r,
        )
        # At 0 from the start: Prometheus's increase() sees the first refusal.
        for refused in ("busy", "loading", "refused"):
            self.sessions.labels(refused)
        self.dropped = Counter(
            "myca_moshi_dropped_frames",
            "Frames dropped: out, answers a client did not read; in, audio sent faster than real time",
            ["direction"],
            registry=r,
        )
        self.start = Gauge(
            "myca_moshi_start_seconds",
            "From the launcher's start to the first caller taken, by whether compiled kernels were found",
            ["compile_cache"],
            registry=r,
        )
        # The GPU's own health (NVML), read at each scrape; absent on a host without one.
        r.register(GpuCollector(Gpus()))
