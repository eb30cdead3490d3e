"""Every module's documentation renders with ansible-doc and says what the module really takes and returns."""

import importlib
import sys
import types

import pytest

from conftest import ROOT, module_doc, undocumented

MODULES = sorted(p.stem for p in (ROOT / "library").glob("*.py"))


def argument_spec(module: str) -> dict:
    """The spec the module hands AnsibleModule, read by running its main() up to that call."""

    class Captured(Exception):
        pass

    def capture(argument_spec, **_):
        raise Captured(argument_spec)

    for util in ("myca_venv", "myca_gpu"):  # the modules import these as ansible.module_utils.X
        sys.modules.setdefault(f"ansible.module_utils.{util}", importlib.import_module(util))
    source = (ROOT / "library" / f"{module}.py").read_text()
    namespace = types.ModuleType(module)
    exec(compile(source, module, "exec"), namespace.__dict__)  # noqa: S102 - the project's own file
    namespace.AnsibleModule = namespace.AnsibleDockerClient = capture  # the latter adds the engine's options
    with pytest.raises(Captured) as caught:
        namespace.main()
    return caught.value.args[0]


@pytest.mark.parametrize("module", MODULES)
def test_documentation_matches_the_argument_spec(module):
    doc = module_doc(module)["doc"]
    spec = argument_spec(module)
    assert set(doc["options"]) == set(spec), "documented options differ from the argument spec"
    for name, option in doc["options"].items():
        given = spec[name]
        assert option["type"] == given.get("type", "str"), name
        assert option.get("default") == given.get("default"), name
        assert option.get("choices") == given.get("choices"), name
        assert option["description"] and all(isinstance(line, str) for line in option["description"]), name
    assert {"check_mode", "diff_mode"} <= set(doc["attributes"])
    assert doc["notes"] and doc["short_description"]


RETURN_FIELDS = {"description", "returned", "type", "sample", "contains", "elements", "version_added"}


@pytest.mark.parametrize("module", MODULES)
def test_every_return_value_has_a_type_and_a_description(module):
    def walk(entries, path=""):
        for key, entry in entries.items():
            assert isinstance(entry, dict), f"{path}{key}: {entry!r} is not an entry (a comma in a flow mapping?)"
            # "null without one.": null is what a description with an unquoted comma becomes
            assert set(entry) <= RETURN_FIELDS, f"{path}{key} has bogus fields {set(entry) - RETURN_FIELDS}"
            assert entry.get("type") and entry.get("description"), path + key
            assert "sample" in entry or "contains" in entry, f"{path}{key} has neither a sample nor contains"
            walk(entry.get("contains", {}), f"{path}{key}.")

    returns = module_doc(module)["return"]
    assert returns
    walk(returns)


@pytest.mark.parametrize("module", MODULES)
def test_documentation_is_block_yaml(module):
    """Flow mappings ({a: b, c}) turn an unquoted comma into a bogus key; the modules write none."""
    import yaml

    source = (ROOT / "library" / f"{module}.py").read_text()
    namespace: dict = {}
    for name in ("DOCUMENTATION", "RETURN", "EXAMPLES"):
        start = source.index(f'{name} = r"""') + len(f'{name} = r"""')
        text = source[start : source.index('"""', start)]
        for event in yaml.parse(text):
            assert not (isinstance(event, yaml.MappingStartEvent) and event.flow_style), (
                f"{name} of {module}: a flow mapping at line {event.start_mark.line + 1}"
            )
        namespace[name] = yaml.safe_load(text)
    assert namespace["RETURN"]


def test_gpu_facts_returns_only_what_it_documents(run_module):
    """Every key the module returns is in RETURN (the torch probe's keys included, with or without torch)."""
    result = run_module("gpu_facts", {"python": sys.executable, "probe_timeout": 120})
    assert result.get("failed") is not True, result
    facts = result["ansible_facts"]["gpu_facts"]
    assert {"torch_version", "triton_error", "torch_devices"} <= set(facts)
    assert undocumented("gpu_facts", result) == []
