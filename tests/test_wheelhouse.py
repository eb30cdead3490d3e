"""Where the lab's torch comes from: find-links, then a CPU index, then the default index (CUDA, said first)."""

import pytest

from myca_ops.lab import wheelhouse

CPU312 = "torch-2.13.0+cpu-cp312-cp312-manylinux_2_28_x86_64.whl"


class FakePip:
    """Records each `pip download` and drops the wheel an index would have for it."""

    def __init__(self, dest, serves: dict[str, str | None]):
        self.dest, self.serves, self.calls = dest, serves, []

    def __call__(self, args: list[str]) -> int:
        self.calls.append(args)
        source = args[args.index("--index-url") + 1] if "--index-url" in args else "default"
        wheel = self.serves.get(source)
        if wheel is None:
            return 1
        (self.dest / wheel).write_bytes(b"wheel")
        return 0


def fetch(tmp_path, pip, cpu_index=None, find_links=(), python="3.12"):
    said = []
    got = wheelhouse.fetch_torch(tmp_path / "wh", "2.13.0", python, list(find_links), cpu_index, pip, said.append)
    return got, said


def test_find_links_wheel_of_the_pin_is_taken_without_pip(tmp_path):
    links = tmp_path / "links"
    links.mkdir()
    for name in (CPU312, "torch-2.14.1+cpu-cp312-cp312-manylinux_2_28_x86_64.whl"):
        (links / name).write_bytes(b"wheel")
    pip = FakePip(tmp_path / "wh", {})
    got, _ = fetch(tmp_path, pip, find_links=[links])
    assert got.name == CPU312 and pip.calls == []


def test_empty_find_links_takes_the_cpu_index_for_the_control_nodes_python(tmp_path):
    (tmp_path / "wh").mkdir()
    pip = FakePip(tmp_path / "wh", {"file:///cpu-index": CPU312})
    got, said = fetch(tmp_path, pip, cpu_index="file:///cpu-index", find_links=[tmp_path / "empty"])
    assert got.name == CPU312
    (call,) = pip.calls
    assert call[call.index("--python-version") + 1] == "3.12" and "torch==2.13.0" in call
    assert not any("CUDA" in line for line in said)


def test_without_a_cpu_build_the_cuda_download_is_announced_with_its_size_first(tmp_path):
    (tmp_path / "wh").mkdir()
    cuda = "torch-2.13.0-cp312-cp312-manylinux_2_28_x86_64.whl"
    pip = FakePip(tmp_path / "wh", {"file:///cpu-index": None, "default": cuda})
    got, said = fetch(tmp_path, pip, cpu_index="file:///cpu-index")
    assert got.name == cuda
    assert len(pip.calls) == 2 and "--index-url" not in pip.calls[1]
    warning = said[-1]
    assert "CUDA build" in warning and "GB" in warning and "MYCA_TORCH_CPU_INDEX" in warning


def test_another_version_is_never_taken_and_the_error_names_what_was_tried(tmp_path):
    (tmp_path / "wh").mkdir()
    other = "torch-2.14.1+cpu-cp312-cp312-manylinux_2_28_x86_64.whl"
    pip = FakePip(tmp_path / "wh", {"default": other})
    with pytest.raises(wheelhouse.WheelhouseError) as err:
        fetch(tmp_path, pip)
    text = str(err.value)
    assert "torch==2.13.0" in text and "find-links" in text
    assert "MYCA_TORCH_CPU_INDEX: not set" in text and "the default index" in text


def test_the_pin_is_the_lab_inventorys(tmp_path):
    assert wheelhouse.torch_version() == "2.13.0"
    bad = tmp_path / "gpu_hosts.yml"
    bad.write_text("moshi_torch_package: torch>=2.9\n")
    with pytest.raises(wheelhouse.WheelhouseError, match="must pin torch==VERSION"):
        wheelhouse.torch_version(bad)
