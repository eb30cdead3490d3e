"""The probe's arithmetic: percentiles, underruns and verdicts, on sequences with known answers."""

import pytest

from myca_ops.voice import loadtest, probe
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


def test_a_caller_behind_its_own_clock_is_not_a_verdict_on_the_server():
    ok, cause = probe.verdict(base_result(own_lag_ms={"p99": 45.0, "max": 60.0}))
    assert not ok and cause.startswith("the caller lagged: its own sends ran up to 60 ms late (p99 45 ms"), cause
    assert probe.lagged(base_result(own_lag_ms={"p99": 45.0, "max": 60.0}))
    assert not probe.lagged(base_result(own_lag_ms={"p99": 3.0, "max": 25.0}))
    assert probe.verdict(base_result(own_lag_ms={"p99": 3.0, "max": 25.0}))[0] is True


@pytest.mark.lab  # sphn, from the lab's wheelhouse
def test_counting_granules_hears_as_much_audio_as_decoding_at_the_same_moments():
    import sphn

    writer, reader, clock = sphn.OpusStreamWriter(24000), sphn.OpusStreamReader(24000), probe.GranuleClock()
    audio = probe.speech_like(2.0)
    decoded, counted = [], []
    for i in range(0, len(audio), 1920):  # the server's answers: one 80 ms frame a message
        message = bytes(writer.append_pcm(audio[i : i + 1920]))
        decoded.append(int(reader.append_bytes(message).shape[-1]))
        counted.append(clock.samples(message))
    assert sum(counted) == len(audio) == 48000
    assert counted == decoded  # message by message: the moments a listener's audio arrives are the same
    assert clock.samples(b"") == 0 and clock.samples(b"not ogg") == 0


def test_a_load_test_with_lagging_callers_judges_by_the_servers_own_ticks():
    callers = [
        base_result(handshake_ms=5.0, own_lag_ms={"p99": 2.0, "max": 4.0}),
        base_result(handshake_ms=5.0, own_lag_ms={"p99": 70.0, "max": 90.0}, underruns=3, gap_ms={"max": 300.0}),
        {"error": "ws://x refused the session: close 1013 'all 2 slots busy'"},
    ]
    asked = []

    def health(url):
        asked.append(url)
        return {"status": "ready", "tick_ms": {"p99": 31.5, "count": 740}, "budget_ms": 80.0}

    load = loadtest.summarise("ws://gpu:8998/api/chat", callers, health)
    assert [c["outcome"] for c in load["callers"]] == ["real-time", "caller lagged", "refused"]
    assert load["cause"] == (
        "1 real-time, 0 late, 0 cut off, 1 refused, 1 caller lagged of 3 callers; 1 caller(s) lagged on this "
        "machine, so the server's own figures: tick p99 31.5 ms over its last 740 ticks (budget 80.0 ms)"
    )
    assert asked == ["ws://gpu:8998/api/chat"] and load["realtime"] is False
    # Nobody lagged: no health read, no lag in the summary.
    load = loadtest.summarise("ws://gpu:8998/api/chat", callers[:1], health)
    assert load["cause"] == "1 real-time, 0 late, 0 cut off, 0 refused of 1 callers" and asked == [asked[0]]


def test_shares_of_a_load_test_from_several_hosts_merge_onto_one_clock():
    def caller(number, start, **extra):
        return {
            **base_result(handshake_ms=5.0, own_lag_ms={"p99": 1.0, "max": 2.0}),
            "caller": number,
            "start_s": start,
            "handshake_s": start + 0.005,
            "stream_s": start + 0.006,
            "first_audio_s": start + 0.3,
            "end_s": start + 4.0,
            "arrival_s": [0.3, 0.38],  # seconds since its own first send: not a moment, never shifted
            **extra,
        }

    host_a = {"url": "ws://b/api/chat", "epoch": 1000.0, "callers": [caller(0, 0.0), caller(2, 1.0)]}
    host_b = {"url": "ws://b/api/chat", "epoch": 1000.5, "callers": [caller(1, 0.0)]}
    load = loadtest.merge([host_b, host_a])
    assert [c["caller"] for c in load["callers"]] == [0, 1, 2]
    assert [c["start_s"] for c in load["callers"]] == [0.0, 0.5, 1.0]
    assert load["callers"][1]["end_s"] == 4.5 and load["callers"][1]["arrival_s"] == [0.3, 0.38]
    assert load["epoch"] == 1000.0 and load["shares"] == 2
    assert load["cause"] == "3 real-time, 0 late, 0 cut off, 0 refused of 3 callers"
    with pytest.raises(ValueError, match="no load test shares"):
        loadtest.merge([])
