"""The GPU's own health, read through NVML (the nvidia-ml-py package): for Moshi's /metrics and
for the verify report's "GPU during the measurement".

Where NVML or a GPU is missing (CPU hosts, the lab) nothing is read and nothing exported: the
series are absent, not zero, so an alert on them cannot fire on a host without a GPU.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

# NVML's clock event reasons that slow a busy GPU down (idle, application clocks and sync boost
# are not trouble): the bit, and the label the metric gives it.
THROTTLE_REASONS = {
    "sw_power_cap": 0x4,
    "hw_slowdown": 0x8,
    "sw_thermal": 0x20,
    "hw_thermal": 0x40,
    "hw_power_brake": 0x80,
}


class Gpus:
    """The host's GPUs as NVML sees them; none when NVML cannot be loaded or finds no device."""

    def __init__(self) -> None:
        self.handles: list = []
        try:
            import pynvml
        except ImportError:  # a venv without it (moshi_server: upstream)
            return
        self.nvml = pynvml
        try:
            pynvml.nvmlInit()
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except pynvml.NVMLError:  # no driver library (a CPU host), or no device
            self.handles = []

    def _maybe(self, read, *args):
        """A figure this GPU may not have (ECC on consumer GPUs, power on some boards): None then."""
        try:
            return read(*args)
        except self.nvml.NVMLError:
            return None

    def read(self) -> list[dict]:
        """One reading per GPU."""
        nv, out = self.nvml, []
        for index, h in enumerate(self.handles):
            memory = nv.nvmlDeviceGetMemoryInfo(h)
            # The newer name first; drivers before 535 have only the older one.
            reasons = self._maybe(nv.nvmlDeviceGetCurrentClocksEventReasons, h)
            if reasons is None:
                reasons = self._maybe(nv.nvmlDeviceGetCurrentClocksThrottleReasons, h)
            power_mw = self._maybe(nv.nvmlDeviceGetPowerUsage, h)
            name = nv.nvmlDeviceGetName(h)
            out.append(
                {
                    "gpu": str(index),
                    "name": name.decode() if isinstance(name, bytes) else name,
                    "utilization": nv.nvmlDeviceGetUtilizationRates(h).gpu / 100,
                    "memory_used_bytes": memory.used,
                    "memory_total_bytes": memory.total,
                    "temperature_c": nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU),
                    "power_w": None if power_mw is None else power_mw / 1000,
                    "throttled": None
                    if reasons is None
                    else sorted(r for r, bit in THROTTLE_REASONS.items() if reasons & bit),
                    "ecc_errors": {
                        kind: count
                        for kind, error_type in (
                            ("corrected", nv.NVML_MEMORY_ERROR_TYPE_CORRECTED),
                            ("uncorrected", nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED),
                        )
                        if (count := self._maybe(nv.nvmlDeviceGetTotalEccErrors, h, error_type, nv.NVML_VOLATILE_ECC))
                        is not None
                    },
                }
            )
        return out


class GpuCollector(Collector):
    """Prometheus series from a fresh reading at each scrape (registered on Moshi's /metrics)."""

    def __init__(self, gpus: Gpus) -> None:
        self.gpus = gpus

    def collect(self) -> Iterator:
        readings = self.gpus.read()
        if not readings:
            return
        labels = ["gpu", "name"]

        def gauge(name: str, doc: str, key: str, scale: float = 1) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=labels)
            for r in readings:
                if r[key] is not None:
                    family.add_metric([r["gpu"], r["name"]], r[key] * scale)
            return family

        yield gauge("myca_gpu_utilization_ratio", "Time the GPU was busy over NVML's last sample period", "utilization")
        yield gauge("myca_gpu_memory_used_bytes", "GPU memory in use (every process)", "memory_used_bytes")
        yield gauge("myca_gpu_memory_total_bytes", "GPU memory in all", "memory_total_bytes")
        yield gauge("myca_gpu_temperature_celsius", "GPU core temperature", "temperature_c")
        yield gauge("myca_gpu_power_watts", "GPU board power draw", "power_w")
        throttled = GaugeMetricFamily(
            "myca_gpu_throttled", "1 while the GPU's clocks are held down for this reason", labels=[*labels, "reason"]
        )
        ecc = CounterMetricFamily(
            "myca_gpu_ecc_errors", "ECC memory errors since the driver loaded", labels=[*labels, "type"]
        )
        for r in readings:
            for reason in THROTTLE_REASONS if r["throttled"] is not None else ():
                throttled.add_metric([r["gpu"], r["name"], reason], int(reason in r["throttled"]))
            for kind, count in r["ecc_errors"].items():
                ecc.add_metric([r["gpu"], r["name"], kind], count)
        yield throttled
        if ecc.samples:
            yield ecc


class Sampler:
    """The GPUs' peaks while a measurement runs (`with Sampler() as s: ...; s.summary()`)."""

    def __init__(self, gpus: Gpus | None = None, every_s: float = 0.5) -> None:
        self.gpus = gpus or Gpus()
        self.every_s = every_s
        self.readings: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.readings += self.gpus.read()
            if self._stop.wait(self.every_s):
                return

    def __enter__(self) -> Sampler:
        if self.gpus.handles:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def summary(self) -> list[dict] | None:
        """Per GPU: the highest utilization, memory, temperature and power seen, and every throttle
        reason seen; None where there is no GPU to read."""
        if not self.gpus.handles:
            return None
        out = []
        for gpu in sorted({r["gpu"] for r in self.readings}, key=int):
            mine = [r for r in self.readings if r["gpu"] == gpu]

            def peak(key: str, rows: list[dict] = mine):
                values = [r[key] for r in rows if r[key] is not None]
                return max(values) if values else None

            out.append(
                {
                    "gpu": gpu,
                    "name": mine[0]["name"],
                    "samples": len(mine),
                    "utilization_max": peak("utilization"),
                    "memory_used_max_bytes": peak("memory_used_bytes"),
                    "memory_total_bytes": mine[0]["memory_total_bytes"],
                    "temperature_max_c": peak("temperature_c"),
                    "power_max_w": peak("power_w"),
                    "throttled": sorted({reason for r in mine for reason in r["throttled"] or ()}),
                }
            )
        return out
