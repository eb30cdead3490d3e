"""The service spec's naming rule (filter_plugins/services.py): what systemd, supervisord and
Docker call each process of a program, and the command each runs."""

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "filter_plugins"))
from services import process_name, service_processes, unit_file  # noqa: E402

API = {
    "name": "myca-mas",
    "command": "/v/bin/myca-mas serve",
    "user": "mas",
    "env_file": "/etc/mas.env",
    "python": "/v/bin/python",
}
COLLECTOR = {**API, "name": "myca-collector", "command": "/v/bin/myca-mas collector", "instances": ["host", "voice"]}
BRIDGE = {"name": "myca-bridge", "command": "/b/bin/myca-bridge serve --config /etc/b.json", "user": "bridge"}


def test_a_program_with_instances_is_a_template_unit_and_one_process_per_instance():
    api, host, voice = service_processes([API, COLLECTOR])
    assert (api["unit"], api["unit_file"], api["process"]) == ("myca-mas.service", "myca-mas.service", "myca-mas")
    assert (host["unit"], host["unit_file"], host["process"]) == (
        "myca-collector@host.service",
        "myca-collector@.service",
        "myca-collector-host",
    )
    assert voice["instance"] == "voice" and voice["unit_file"] == host["unit_file"]
    # Outside systemd the environment file is read by the venv's python, and the instance is the last argument.
    assert host["argv"] == [
        "/v/bin/python",
        "-m",
        "myca_ops.envfile",
        "/etc/mas.env",
        "/v/bin/myca-mas",
        "collector",
        "host",
    ]


def test_a_program_without_an_environment_file_runs_its_command_alone():
    (bridge,) = service_processes([BRIDGE])
    assert bridge["argv"] == ["/b/bin/myca-bridge", "serve", "--config", "/etc/b.json"]
    assert bridge["user"] == "bridge"


def test_no_instances_listed_means_no_process_of_that_program_but_still_its_template():
    assert service_processes([{**COLLECTOR, "instances": []}]) == []
    assert unit_file({**COLLECTOR, "instances": []}) == "myca-collector@.service"


def test_a_unit_names_its_program_or_container():
    assert process_name("myca-collector@host.service") == "myca-collector-host"
    assert process_name("myca-collector@host") == "myca-collector-host"
    assert process_name("moshi") == "moshi"
