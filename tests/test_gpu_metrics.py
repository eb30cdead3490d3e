"""The GPU's health through NVML (myca_ops.voice.gpu): the real nvidia-ml-py package over a fake
NVML library (the object ctypes would have loaded from libnvidia-ml.so.1), and over none, as on
a CPU host."""

import ctypes
import time

import pynvml
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from myca_ops.voice.gpu import GpuCollector, Gpus, Sampler

NOT_SUPPORTED = 3  # NVML_ERROR_NOT_SUPPORTED


class FakeNvml:
    """NVML's C functions as pynvml calls them: arguments are ctypes objects, results are written
    through the pointers passed, the return value is NVML's status code."""

    def __init__(self, gpus: list[dict]) -> None:
        self.gpus = gpus
        self.temperatures_returned: list[int] = []

    def _gpu(self, handle) -> dict:
        return self.gpus[ctypes.cast(handle, ctypes.c_void_p).value - 1]

    def nvmlInitWithFlags(self, flags):
        return 0

    def nvmlDeviceGetCount_v2(self, count):
        count._obj.value = len(self.gpus)
        return 0

    def nvmlDeviceGetHandleByIndex_v2(self, index, handle):
        # The handle is an opaque pointer: the GPU's index + 1, so that none is NULL.
        ctypes.cast(ctypes.byref(handle._obj), ctypes.POINTER(ctypes.c_void_p))[0] = index.value + 1
        return 0

    def nvmlDeviceGetName(self, handle, buffer, length):
        buffer.value = self._gpu(handle)["name"].encode()
        return 0

    def nvmlDeviceGetUtilizationRates(self, handle, util):
        util._obj.gpu = self._gpu(handle)["util"]
        return 0

    def nvmlDeviceGetMemoryInfo(self, handle, memory):
        gpu = self._gpu(handle)
        memory._obj.total, memory._obj.used = gpu["total"], gpu["used"]
        memory._obj.free = gpu["total"] - gpu["used"]
        return 0

    def nvmlDeviceGetTemperature(self, handle, sensor, temperature):
        gpu = self._gpu(handle)
        value = gpu["temps"].pop(0) if len(gpu["temps"]) > 1 else gpu["temps"][0]
        self.temperatures_returned.append(value)
        temperature._obj.value = value
        return 0

    def nvmlDeviceGetPowerUsage(self, handle, milliwatts):
        gpu = self._gpu(handle)
        if gpu["power_mw"] is None:
            return NOT_SUPPORTED
        milliwatts._obj.value = gpu["power_mw"]
        return 0

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle, reasons):
        reasons._obj.value = self._gpu(handle)["reasons"]
        return 0

    def nvmlDeviceGetTotalEccErrors(self, handle, error_type, counter_type, count):
        ecc = self._gpu(handle)["ecc"]
        if ecc is None:
            return NOT_SUPPORTED
        count._obj.value = ecc[error_type.value]
        return 0

    def nvmlErrorString(self, code):
        return b"Not Supported" if code == NOT_SUPPORTED else b"Unknown Error"


def h200(**changes) -> dict:
    return {
        "name": "NVIDIA H200",
        "util": 97,
        "total": 150 << 30,
        "used": 40 << 30,
        "temps": [61],
        "power_mw": 612_500,
        "reasons": 0x40 | 0x1,  # HW thermal slowdown (and idle, which is no trouble)
        "ecc": {0: 2, 1: 0},  # corrected, uncorrected
        **changes,
    }


def consumer() -> dict:
    """A GPU without ECC and without a power reading."""
    return h200(
        name="NVIDIA GeForce RTX 4090", util=12, total=24 << 30, used=3 << 30, power_mw=None, reasons=0, ecc=None
    )


@pytest.fixture
def nvml(monkeypatch):
    """Install a fake NVML with the given GPUs, as if ctypes had loaded it."""

    def install(*gpus: dict) -> FakeNvml:
        fake = FakeNvml(list(gpus))
        monkeypatch.setattr(pynvml, "nvmlLib", fake)
        monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer_cache", {})
        return fake

    return install


def scrape(gpus: Gpus) -> dict:
    registry = CollectorRegistry()
    registry.register(GpuCollector(gpus))
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k not in ("name",)))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_host_without_nvml_exports_no_gpu_series(monkeypatch):
    """A CPU host: the driver's library is missing, so the series are absent, not zero."""

    def no_library(name, *args, **kwargs):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(pynvml, "nvmlLib", None)
    monkeypatch.setattr(pynvml, "CDLL", no_library)
    gpus = Gpus()
    assert gpus.handles == [] and gpus.read() == []
    assert scrape(gpus) == {}
    with Sampler(gpus) as sampler:
        pass
    assert sampler.summary() is None  # the verify report then says "no GPU"


def test_each_gpu_figure_is_exported_with_its_unit(nvml):
    nvml(h200(), consumer())
    series = scrape(Gpus())
    gpu0, gpu1 = (("gpu", "0"),), (("gpu", "1"),)
    assert series[("myca_gpu_utilization_ratio", gpu0)] == 0.97
    assert series[("myca_gpu_memory_used_bytes", gpu0)] == 40 << 30
    assert series[("myca_gpu_memory_total_bytes", gpu1)] == 24 << 30
    assert series[("myca_gpu_temperature_celsius", gpu0)] == 61
    assert series[("myca_gpu_power_watts", gpu0)] == 612.5
    assert ("myca_gpu_power_watts", gpu1) not in series  # not read on that board: absent, not 0
    # Each throttle reason a series: 1 for the one the GPU reports, 0 for the others; idle is not one.
    throttled = {k[1][1][1]: v for k, v in series.items() if k[0] == "myca_gpu_throttled" and k[1][0] == ("gpu", "0")}
    assert throttled == {"hw_power_brake": 0, "hw_slowdown": 0, "hw_thermal": 1, "sw_power_cap": 0, "sw_thermal": 0}
    assert series[("myca_gpu_throttled", (("gpu", "1"), ("reason", "hw_thermal")))] == 0
    assert series[("myca_gpu_ecc_errors_total", (("gpu", "0"), ("type", "corrected")))] == 2
    assert series[("myca_gpu_ecc_errors_total", (("gpu", "0"), ("type", "uncorrected")))] == 0
    assert not [k for k in series if k[0] == "myca_gpu_ecc_errors_total" and k[1][0] == ("gpu", "1")]


def test_the_measurement_reports_each_gpu_s_peaks_and_every_throttle_seen(nvml):
    fake = nvml(h200(temps=[60, 71, 84, 66]))
    with Sampler(Gpus(), every_s=0.01) as sampler:
        deadline = time.monotonic() + 10
        while len(fake.temperatures_returned) < 4 and time.monotonic() < deadline:
            time.sleep(0.005)
    (gpu,) = sampler.summary()
    assert gpu["samples"] >= 4 and gpu["temperature_max_c"] == max(fake.temperatures_returned) == 84
    assert gpu["throttled"] == ["hw_thermal"] and gpu["power_max_w"] == 612.5
    assert gpu["memory_used_max_bytes"] == 40 << 30 and gpu["name"] == "NVIDIA H200"
