"""myca_ops.voice.model: the one mode decision and the weights layout."""

import pytest

from myca_ops.voice import model
from myca_ops.voice.model import Recommendation

GRAPHS = Recommendation("graphs", "CUDA graphs on, torch.compile off: Triton is not installed", "no_triton")
FAST = Recommendation("compile+graphs", "ok", None)


@pytest.mark.parametrize(
    "device, recommended, graphs_off, compile_off, mode, limit, env",
    [
        ("cuda", FAST, False, False, "compile+graphs", None, {}),
        ("cuda:1", FAST, False, False, "compile+graphs", None, {}),
        ("cuda", GRAPHS, False, False, "graphs", "no_triton", {"NO_TORCH_COMPILE": "1"}),
        ("cuda", FAST, False, True, "graphs", "forced", {"NO_TORCH_COMPILE": "1"}),
        ("cuda", FAST, True, False, "compile", "forced", {"NO_CUDA_GRAPH": "1"}),
        ("cuda", FAST, True, True, "eager", "forced", {"NO_TORCH_COMPILE": "1", "NO_CUDA_GRAPH": "1"}),
        ("cuda", GRAPHS, True, False, "eager", "forced", {"NO_TORCH_COMPILE": "1", "NO_CUDA_GRAPH": "1"}),
        ("cpu", Recommendation("cpu", "x", "no_cuda"), False, False, "cpu", "no_cuda", {"NO_TORCH_COMPILE": "1"}),
        ("cpu", FAST, False, False, "cpu", "no_cuda", {"NO_TORCH_COMPILE": "1"}),
    ],
)
def test_mode_decision(device, recommended, graphs_off, compile_off, mode, limit, env):
    decision = model.decide(device, recommended, graphs_off, compile_off)
    assert (decision.mode, decision.limit, decision.env) == (mode, limit, env)


def test_graphs_mode_keeps_the_facts_reason():
    decision = model.decide("cuda", GRAPHS, False, False)
    assert decision.reason == GRAPHS.reason and decision.warning is None


def test_forcing_graphs_off_warns_with_the_frame_budget():
    decision = model.decide("cuda", FAST, True, False)
    assert "moshi_force_no_cuda_graph" in decision.reason
    assert "200 ms" in decision.warning and "80 ms frame budget" in decision.warning


def test_cuda_asked_on_a_host_without_cuda_is_an_error():
    with pytest.raises(ValueError, match="torch 2.13.0 sees no CUDA device"):
        model.decide("cuda", Recommendation("cpu", "torch 2.13.0 sees no CUDA device", "no_cuda"), False, False)


def test_unknown_recommended_mode_is_an_error():
    with pytest.raises(ValueError, match="unknown recommended mode 'fast'"):
        model.decide("cuda", Recommendation("fast", "", None), False, False)


def test_the_environment_file_carries_the_limit_as_data():
    env = {
        "MYCA_MOSHI_DEVICE": "cuda",
        "MYCA_MOSHI_RECOMMENDED_MODE": "graphs",
        "MYCA_MOSHI_RECOMMENDED_REASON": "anything at all",
        "MYCA_MOSHI_RECOMMENDED_LIMIT": "triton_fails",
    }
    assert model.decide_from_env(env).limit == "triton_fails"
    assert model.decide_from_env({**env, "MYCA_MOSHI_FORCE_COMPILE_OFF": "yes"}).limit == "triton_fails"
    assert model.decide_from_env({**env, "MYCA_MOSHI_FORCE_GRAPHS_OFF": "on"}).limit == "forced"


# The probe's facts (gpu_facts, myca-moshi probe, serve --auto) -> (mode, limit, a part of the reason).
LINUX = {
    "system": "Linux",
    "torch_version": "2.9.1",
    "torch_cuda_available": True,
    "triton_version": "3.5.1",
    "triton_compiles": True,
    "c_compiler": "/usr/bin/cc",
    "python_headers": True,
}
WINDOWS = {**LINUX, "system": "Windows", "triton_version": None, "triton_compiles": False}


@pytest.mark.parametrize(
    "facts, mode, limit, reason",
    [
        (
            {**LINUX, "torch_version": None, "probe_error": "torch is not importable"},
            None,
            "not_probed",
            "not probed: torch is not importable",
        ),
        ({**LINUX, "torch_cuda_available": False}, "cpu", "no_cuda", "torch 2.9.1 sees no CUDA device"),
        (LINUX, "compile+graphs", None, "CUDA and Triton 3.5.1 compile a kernel"),
        ({**LINUX, "triton_version": None}, "graphs", "no_triton", "pip install the triton release your torch names"),
        (WINDOWS, "graphs", "no_triton", 'pip install "triton-windows>=3.5,<3.6" (torch 2.9.1)'),
        ({**WINDOWS, "torch_version": "2.6.0"}, "graphs", "no_triton", 'pip install "triton-windows>=3.2,<3.3"'),
        ({**WINDOWS, "torch_version": "2.11.0"}, "graphs", "no_triton", "triton-windows release made for torch 2.11.0"),
        (
            {
                **LINUX,
                "triton_compiles": False,
                "triton_error": "RuntimeError: Failed to find C compiler",
                "c_compiler": None,
            },
            "graphs",
            "triton_fails",
            "Triton 3.5.1 cannot compile: RuntimeError: Failed to find C compiler (no C compiler: install gcc)",
        ),
        (
            {**LINUX, "triton_compiles": False, "triton_error": "CalledProcessError", "python_headers": False},
            "graphs",
            "triton_fails",
            "Python.h missing: install the python3-dev package",
        ),
    ],
)
def test_the_fastest_mode_that_works_from_the_probed_facts(facts, mode, limit, reason):
    got = model.recommend(facts)
    assert (got.mode, got.limit) == (mode, limit)
    assert reason in got.reason


def test_auto_never_turns_cuda_graphs_off_itself():
    """What --auto hands to the decision: graphs stay on whatever Triton does; only compile goes."""
    for facts in (WINDOWS, LINUX, {**LINUX, "triton_compiles": False}):
        decision = model.decide_from_env(model.auto_env({}, facts))
        assert "NO_CUDA_GRAPH" not in decision.env and decision.mode in ("graphs", "compile+graphs")
    assert model.decide_from_env(model.auto_env({}, {**WINDOWS, "torch_cuda_available": False})).mode == "cpu"
    assert model.auto_env({"MYCA_MOSHI_DEVICE": "cuda:1"}, WINDOWS)["MYCA_MOSHI_DEVICE"] == "cuda:1"


def test_an_environment_file_that_says_auto_is_decided_by_probing_here(monkeypatch):
    """A container's moshi.env (moshi_runtime: docker) says auto: the server and verify's measurement
    beside it both probe the image's torch, so they pick the same mode."""
    monkeypatch.setattr(model, "probe", lambda: {**LINUX, "triton_version": "3.6.0"})
    env = {"MYCA_MOSHI_DEVICE": "cuda", "MYCA_MOSHI_RECOMMENDED_MODE": "auto", "MYCA_MOSHI_RECOMMENDED_REASON": ""}
    decision = model.decide_from_env(env)
    assert decision.mode == "compile+graphs" and "Triton 3.6.0 compile a kernel" in decision.reason
    monkeypatch.setattr(model, "probe", lambda: {**LINUX, "triton_version": None})
    assert (model.decide_from_env(env).mode, model.decide_from_env(env).limit) == ("graphs", "no_triton")


def test_missing_weight_file_names_it(tmp_path):
    (tmp_path / model.MOSHI_FILE).write_bytes(b"x")
    with pytest.raises(FileNotFoundError) as err:
        model.resolve_weights(tmp_path)
    assert model.MIMI_FILE in str(err.value) and model.TOKENIZER_FILE in str(err.value)
    assert model.MOSHI_FILE not in str(err.value).split("missing weight file(s): ")[1].split(";")[0]


def test_broken_config_names_the_file(tmp_path):
    for name in (model.MOSHI_FILE, model.MIMI_FILE, model.TOKENIZER_FILE):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / model.CONFIG_FILE).write_text('{"dim": 256,')
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        model.resolve_weights(tmp_path)


@pytest.mark.lab  # torch
def test_the_dtype_rule_is_the_servers():
    import torch

    assert model.dtype_for("cpu", half=True) is torch.float32  # bf16 is slow on CPU
    assert model.dtype_for("cuda", half=False) is torch.bfloat16
    assert model.dtype_for("cuda:1", half=True) is torch.float16


# torch.cuda.get_arch_list() of PyPI's builds: PersonaPlex's pin (2.4.1, CUDA 12.1) and a CUDA 12.8 torch.
TORCH_241 = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]
TORCH_CU128 = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]


@pytest.mark.parametrize(
    "gpu, capability, arch_list, runs",
    [
        ("NVIDIA GeForce RTX 4090", "8.9", TORCH_241, True),  # sm_86's kernels run on 8.9
        ("NVIDIA GeForce RTX 3090", "8.6", TORCH_241, True),
        ("NVIDIA A100-SXM4-80GB", "8.0", TORCH_241, True),
        ("NVIDIA GeForce RTX 5090", "12.0", TORCH_241, False),  # no sm_12x, no PTX
        ("NVIDIA GeForce RTX 5090", "12.0", TORCH_CU128, True),
        ("NVIDIA GeForce RTX 2080", "7.5", ["sm_80", "sm_90"], False),  # newer cubins do not run on older GPUs
        ("NVIDIA H100 80GB HBM3", "9.0", ["sm_80", "compute_80"], True),  # PTX is compiled for newer GPUs
    ],
)
def test_the_preflight_knows_whether_the_serving_torch_runs_on_the_gpu(gpu, capability, arch_list, runs):
    facts = {**LINUX, "torch_version": "2.4.1", "torch_cuda_version": "12.1", "torch_arch_list": arch_list}
    facts["torch_devices"] = [{"name": gpu, "capability": capability}]
    got = model.recommend(facts)
    if runs:
        assert got.limit != "gpu_unsupported"
    else:
        assert (got.mode, got.limit) == (None, "gpu_unsupported")
        sm = "sm_" + capability.replace(".", "")
        assert got.reason.startswith(f"{gpu} is {sm}; torch 2.4.1 (CUDA 12.1) has kernels for ")
        assert f"install a torch built for {sm}" in got.reason


def test_a_service_on_a_gpu_its_torch_cannot_run_stops_at_start_naming_the_build():
    """In a container the role has no venv to check: the service probes at start (auto) and must
    stop there with the reason, not start in compile+graphs and fail at the first kernel."""
    facts = {**LINUX, "torch_version": "2.4.1", "torch_cuda_version": "12.1", "torch_arch_list": TORCH_241}
    facts["torch_devices"] = [{"name": "NVIDIA GeForce RTX 5090", "capability": "12.0"}]
    with pytest.raises(ValueError, match="RTX 5090 is sm_120; .*install a torch built for sm_120"):
        model.decide_from_env(model.auto_env({}, facts))


def test_an_8bit_checkpoint_in_kyutais_format_is_read_as_moshi_reads_it_and_refused_on_cpu(lab_weights):
    """The lab's 8-bit checkpoint (moshi's own int8 layers, config.json's quantize, as Kyutai's
    moshiko-pytorch-q8): the service refuses it on CPU with the reason; moshi's loader reads it,
    every linear layer of the LM int8 with a scale per row, but casts the scales to bf16, which its
    int8 layer refuses at the first step; with the scales read again as float32 the LM steps."""
    import torch
    from moshi.models import LMGen, loaders
    from moshi.utils.quantize import QLinear

    from myca_ops.lab.weights import generate

    folder = generate(lab_weights.parent / "weights-q8", quantize=True)
    with pytest.raises(ValueError, match="served on a CUDA GPU under Linux only, not on device cpu"):
        model.load({"MYCA_MOSHI_DEVICE": "cpu", "MYCA_MOSHI_WEIGHTS_DIR": str(folder)})
    paths = model.resolve_weights(folder)
    assert model.quantized(paths) and not model.quantized(model.resolve_weights(lab_weights))
    info = loaders.CheckpointInfo.from_hf_repo(
        "local/unused", paths["moshi"], paths["mimi"], paths["tokenizer"], config_path=paths["config"]
    )
    torch.set_grad_enabled(False)
    lm = info.get_moshi(device="cpu", dtype=torch.bfloat16)
    layers = [m for m in lm.modules() if isinstance(m, QLinear)]
    assert layers and all(m.weight.dtype == torch.int8 for m in layers)

    def steps(lm) -> list:
        gen = LMGen(lm, use_sampling=False, support_out_of_sync=True)
        with gen.streaming(1):
            return [gen.step(torch.zeros(1, 8, 1, dtype=torch.long))[0, :, 0].tolist() for _ in range(4)]

    with pytest.raises(RuntimeError, match="weight_scb"):
        steps(lm)
    model.keep_scales_float(lm, paths["moshi"])
    assert all(m.weight_scb.dtype == torch.float32 for m in layers)
    answered = steps(lm)[-1]
    assert 0 <= answered[0] < lm.text_card and all(0 <= t < lm.card for t in answered[1:])
