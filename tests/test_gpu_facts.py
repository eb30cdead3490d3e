"""Fact derivation for GPU hosts, with real-looking inputs."""

import stat

import pytest

import myca_gpu

WSL2_KERNELS = [
    "Linux version 5.15.167.4-microsoft-standard-WSL2 (root@f9c826d3017f) (gcc (GCC) 11.2.0, GNU ld) #1 SMP",
    "Linux version 6.6.36.6-microsoft-standard-WSL2 (root@c2e3f6d4c1a9) (gcc (GCC) 11.2.0) #1 SMP PREEMPT_DYNAMIC",
    "Linux version 4.19.128-microsoft-standard (oe-user@oe-host) (gcc version 8.2.0 (GCC)) #1 SMP",
]
WSL1_KERNEL = "Linux version 4.4.0-19041-Microsoft (Microsoft@Microsoft.com) (gcc version 5.4.0 (GCC) ) #1237-Microsoft"
NATIVE_KERNELS = [
    "Linux version 6.8.0-45-generic (buildd@lcy02-amd64-115) (x86_64-linux-gnu-gcc-13 (Ubuntu 13.2.0-23ubuntu4) 13.2.0)",
    "Linux version 6.1.0-26-cloud-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14) 12.2.0) #1 SMP",
]


@pytest.mark.parametrize("text", WSL2_KERNELS)
def test_wsl2_kernels_are_wsl2(text):
    assert myca_gpu.parse_proc_version(text) == {"is_wsl2": True, "is_wsl1": False}


def test_wsl1_is_not_wsl2():
    assert myca_gpu.parse_proc_version(WSL1_KERNEL) == {"is_wsl2": False, "is_wsl1": True}


@pytest.mark.parametrize("text", NATIVE_KERNELS + [""])
def test_native_kernels_are_neither(text):
    assert myca_gpu.parse_proc_version(text) == {"is_wsl2": False, "is_wsl1": False}


def test_nvidia_smi_csv_with_two_gpus():
    csv = "NVIDIA H100 80GB HBM3, 81559, 80987, 550.54.15\nNVIDIA RTX A6000, 49140, 48000, 550.54.15\n"
    gpus = myca_gpu.parse_nvidia_smi(csv)
    assert [g["name"] for g in gpus] == ["NVIDIA H100 80GB HBM3", "NVIDIA RTX A6000"]
    assert gpus[0]["memory_total_mib"] == 81559 and gpus[1]["memory_free_mib"] == 48000
    assert gpus[0]["driver_version"] == "550.54.15"


def test_nvidia_smi_under_wsl2_with_partial_nvml():
    gpus = myca_gpu.parse_nvidia_smi("NVIDIA GeForce RTX 4090, 24564, [N/A], 566.14\n")
    assert gpus == [
        {
            "name": "NVIDIA GeForce RTX 4090",
            "memory_total_mib": 24564,
            "memory_free_mib": None,
            "driver_version": "566.14",
        }
    ]


def test_nvidia_smi_errors_and_blank_lines_list_no_gpu():
    assert myca_gpu.parse_nvidia_smi("") == []
    assert myca_gpu.parse_nvidia_smi("No devices were found\n\n") == []


def test_collect_on_a_wsl2_layout_with_nvidia_smi(tmp_path, monkeypatch):
    """WSL2 keeps nvidia-smi and libcuda in the driver folder, off PATH."""
    (tmp_path / "proc_version").write_text(WSL2_KERNELS[0])
    (tmp_path / "dxg").write_text("")
    lib = tmp_path / "wsl-lib"
    lib.mkdir()
    (lib / "libcuda.so.1").write_text("")
    smi = lib / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA GeForce RTX 4090, 24564, [N/A], 566.14'\n")
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    facts = myca_gpu.collect(
        python="/usr/bin/python3",
        proc_version_path=str(tmp_path / "proc_version"),
        dxg_path=str(tmp_path / "dxg"),
        wsl_lib_dir=str(lib),
        disk_path=str(tmp_path / "not" / "yet"),
        probe_torch=False,
        env={"WSL_DISTRO_NAME": "Ubuntu-24.04"},
    )
    assert facts["is_wsl2"] and facts["wsl_gpu_device"]
    assert facts["wsl_distro_name"] == "Ubuntu-24.04"
    assert facts["nvidia_smi"] == str(smi)
    assert facts["gpu_count"] == 1 and facts["driver_version"] == "566.14"
    assert facts["triton_libcuda_path"] == str(lib)
    assert facts["disk_free_gb"] > 0
    # The mode is myca_ops.voice.model's to decide, with torch: not probed here, and said so.
    assert facts["recommended_moshi_mode"] is None and facts["recommended_moshi_mode_limit"] == "not_probed"


def test_collect_with_everything_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    facts = myca_gpu.collect(
        python=str(tmp_path / "no-python"),
        proc_version_path=str(tmp_path / "missing"),
        dxg_path=str(tmp_path / "missing-dxg"),
        wsl_lib_dir=str(tmp_path / "missing-lib"),
        env={},
    )
    assert facts["nvidia_smi"] is None and facts["gpu_count"] == 0
    assert facts["python_found"] is False and facts["python_headers"] is False
    assert facts["c_compiler"] is None and facts["torch_version"] is None
    assert facts["recommended_moshi_mode"] is None


def test_failing_nvidia_smi_is_a_fact(tmp_path, monkeypatch):
    smi = tmp_path / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver.'\nexit 9\n"
    )
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    facts = myca_gpu.collect(proc_version_path="/proc/version", probe_torch=False, env={})
    assert facts["gpu_count"] == 0
    assert "could not communicate with the NVIDIA driver" in facts["nvidia_smi_error"]


def test_an_interpreter_without_myca_ops_gives_no_mode_and_says_why():
    facts = myca_gpu.collect(python="/usr/bin/python3", probe_torch=True, env={})
    assert facts["torch_version"] is None and facts["recommended_moshi_mode"] is None
    assert facts["probe_error"] == "/usr/bin/python3 has no myca_ops (the moshi role installs it into Moshi's venv)"
    assert facts["recommended_moshi_mode_reason"] == "not probed: " + facts["probe_error"]


@pytest.mark.lab  # torch in this venv
def test_the_venvs_interpreter_gets_its_mode_from_myca_ops():
    """The same function as the launcher's: this venv's CPU torch sees no CUDA device."""
    import sys

    from myca_ops.voice import model

    facts = myca_gpu.collect(python=sys.executable, probe_torch=True, env={})
    expected = model.recommend(model.probe())
    assert facts["torch_version"] and facts["torch_cuda_available"] is False
    assert (facts["recommended_moshi_mode"], facts["recommended_moshi_mode_limit"]) == ("cpu", "no_cuda")
    assert facts["recommended_moshi_mode_reason"] == expected.reason
