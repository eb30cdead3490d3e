"""The service spec's naming rule (filter_plugins/services.py): what systemd, supervisord and
Docker call each process of a program, and the command each runs."""

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "filter_plugins"))
from services import images_to_prune, process_name, service_processes, unit_file  # noqa: E402

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
    # a scheduled job: systemd's timer, supervisord's looping program of the same name
    assert process_name("myca-mas-backup.timer") == "myca-mas-backup"


def image(id_: str, created: int, *tags: str) -> dict:
    return {"Id": id_, "Created": created, "RepoTags": list(tags), "Size": 1}


def test_after_a_deploy_only_the_running_image_and_the_one_before_it_stay():
    images = [
        image("sha256:d", 400, "myca-moshi:d4"),
        image("sha256:a", 100, "myca-moshi:a1"),
        image("sha256:c", 300, "myca-moshi:c3", "myca-moshi:c3-again"),
        image("sha256:b", 200, "myca-moshi:b2"),
    ]
    # c3 is the one before d4 (the rollback): kept under both its tags.
    assert images_to_prune(images, "myca-moshi:d4") == ["myca-moshi:b2", "myca-moshi:a1"]
    # Rolled back to b2 (moshi_image_tag): the newest other image (d4, the bad deploy) stays, for a roll forward.
    assert images_to_prune(images, "myca-moshi:b2") == ["myca-moshi:c3", "myca-moshi:c3-again", "myca-moshi:a1"]
    # The running image under a second tag is the running image.
    assert images_to_prune([*images, image("sha256:d", 400, "myca-moshi:latest")], "myca-moshi:latest") == [
        "myca-moshi:b2",
        "myca-moshi:a1",
    ]
    assert images_to_prune(images, "myca-moshi:not-built") == []  # check mode: nothing is known to be older


def test_a_scheduled_job_is_its_timer_under_systemd_and_a_loop_elsewhere():
    backup = {**API, "name": "myca-mas-backup", "command": "/v/bin/myca-mas backup", "every_s": 60}
    (job,) = service_processes([backup])
    assert (job["unit"], job["unit_file"], job["process"]) == (
        "myca-mas-backup.timer",
        "myca-mas-backup.service",
        "myca-mas-backup",
    )
    assert job["argv"][-3:] == ["backup", "--every", "60"]  # supervisord's program and the container loop
