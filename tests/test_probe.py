"""The probe's arithmetic: percentiles, underruns and verdicts, on sequences with known answers."""

import pytest

from myca_ops.voice import probe
from myca_ops.voice.stats import percentile, summary

FRAME = 1920 * 2  # one 80 ms model frame at 48 kHz playback


def test_percentiles_interpolate_like_numpy():
    values = list(range(1, 101))
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([], 50) is None
    assert summary([10.0, 20.0, 30.0]) == {"count": 3, "p50": 20.0, "p95": 29.0, "p99": 29.8, "max": 30.0}


def test_steady_frames_every_80_ms_never_underrun():
    arrivals = [(0.5 + i * 0.080, FRAME) for i in range(100)]
    assert probe.count_underruns(arrivals) == 0


def test_jitter_within_the_buffer_never_underruns():
    arrivals = [(0.5 + i * 0.080 + (0.03 if i % 2 else 0.0), FRAME) for i in range(100)]
    assert probe.count_underruns(arrivals) == 0


def test_frames_every_200_ms_underrun_each_time():
    """The field report's slow mode: 200 ms per 80 ms frame runs dry before every arrival."""
    arrivals = [(i * 0.200, FRAME) for i in range(10)]
    assert probe.count_underruns(arrivals) == 9


def test_one_long_stall_is_one_underrun():
    arrivals = [(i * 0.080, FRAME) for i in range(10)]
    arrivals += [(0.72 + 0.5 + i * 0.080, FRAME) for i in range(10)]
    assert probe.count_underruns(arrivals) == 1


def test_playback_waits_for_the_prebuffer():
    # Half-frames: the first one does not start playback, so no underrun before the second.
    assert probe.count_underruns([(0.0, 1000), (0.5, 1000), (0.52, 4000)]) == 0


def base_result(**kw):
    result = {
        "error": None,
        "audio_messages": 50,
        "underruns": 0,
        "realtime_ratio": 1.0,
        "audio_received_s": 3.76,
        "audio_wall_s": 3.76,
        "wall_s": 5.0,
        "sent_s": 4.0,
        "first_audio_ms": 300.0,
        "gap_ms": {"max": 90.0},
    }
    result.update(kw)
    return result


def test_verdicts():
    assert probe.verdict(base_result())[0] is True
    ok, cause = probe.verdict(base_result(underruns=12, gap_ms={"max": 250.0}))
    assert not ok and "12 playback underrun(s)" in cause and "250 ms" in cause
    ok, cause = probe.verdict(base_result(audio_messages=0))
    assert not ok and "no audio came back" in cause
    ok, cause = probe.verdict(base_result(realtime_ratio=0.5, audio_wall_s=7.5))
    assert not ok and "slower than real time" in cause
    ok, cause = probe.verdict(base_result(audio_messages=1, audio_received_s=0.08, audio_wall_s=0.08))
    assert not ok and "only 0.08s of audio came back for 4.00s sent" in cause
    ok, cause = probe.verdict(base_result(first_audio_ms=3671.0))
    assert not ok and "first audio after 3671 ms" in cause
    ok, cause = probe.verdict(base_result(error="cannot talk to ws://x: refused"))
    assert not ok and "refused" in cause


@pytest.mark.lab  # numpy, from the lab's wheelhouse
def test_speech_like_audio_is_24k_with_pauses():
    audio = probe.speech_like(2.0)
    assert audio.shape == (48000,) and audio.dtype.name == "float32"
    assert 0.05 < abs(audio).max() <= 1.0
