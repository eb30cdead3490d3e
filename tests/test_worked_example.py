"""ARCHITECTURE.md's worked example (a `myca-notes` service) built with the roles, as written there:
its record passes python_service's argument spec, and gives the units, the supervisord program,
the container's argv and image, and the names `myca-ops status` reads."""

import json
import re
import subprocess
import sys

import pytest
import yaml

from conftest import BIN, ROOT, ansible_env, ini


def example_files() -> dict[str, str]:
    """The example's files, each a part of the one YAML block after its heading comment."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    block = re.search(r"For example, a `myca-notes`.*?```yaml\n(.*?)```", text, re.S)
    assert block, "ARCHITECTURE.md has no worked example"
    parts = re.split(r"^# (roles/notes/\S+)\n", block.group(1), flags=re.M)
    return {path: "---\n" + body for path, body in zip(parts[1::2], parts[2::2], strict=True)}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """The example's role written out, then the roles' own templates and names rendered from its
    record (on this machine, nothing installed), per manager and runtime."""
    tmp = tmp_path_factory.mktemp("notes")
    for path, body in example_files().items():
        (tmp / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp / path).write_text(body)
    spec = ROOT / "roles/python_service/meta/argument_specs.yml"
    play = [
        {
            "hosts": "localhost",
            "gather_facts": False,
            "vars_files": [
                str(tmp / "roles/notes/vars/main.yml"),
                str(ROOT / "roles/python_service/defaults/main.yml"),
                str(ROOT / "roles/python_service/vars/main.yml"),
            ],
            "vars": {"python_service_record": "{{ notes_service }}", "out": str(tmp)},
            "tasks": [
                {
                    "name": "Validate the record with python_service's argument spec",
                    "ansible.builtin.validate_argument_spec": {
                        "argument_spec": f"{{{{ (lookup('file', '{spec}') | from_yaml).argument_specs.run.options }}}}",
                        "provided_arguments": {"python_service_record": "{{ notes_service }}"},
                    },
                },
                {
                    "name": "Render the units",
                    "ansible.builtin.template": {
                        "src": str(ROOT / "roles/python_service/templates/unit.service.j2"),
                        "dest": "{{ out }}/{{ item | myca_unit_file }}",
                        "mode": "0644",
                    },
                    "loop": "{{ python_service_svc.programs }}",
                },
                {
                    "name": "Render the hardening drop-in",
                    "ansible.builtin.template": {
                        "src": str(ROOT / "roles/python_service/templates/hardening.conf.j2"),
                        "dest": "{{ out }}/hardening.conf",
                        "mode": "0644",
                    },
                },
                {
                    "name": "Render the supervisord programs",
                    "ansible.builtin.template": {
                        "src": str(ROOT / "roles/python_service/templates/program.conf.j2"),
                        "dest": "{{ out }}/{{ item.name }}.conf",
                        "mode": "0644",
                    },
                    "loop": "{{ python_service_svc.programs }}",
                },
                {
                    "name": "Write what the roles name from the record",
                    "ansible.builtin.copy": {
                        "content": (
                            "{{ {'image': python_service_svc.image_name, 'flag': python_service_svc.restart_flag,"
                            " 'manager': python_service_manager, 'processes': python_service_processes,"
                            " 'status_reads': python_service_states_of} | to_json }}"
                        ),
                        "dest": "{{ out }}/names.json",
                        "mode": "0644",
                    },
                },
            ],
        }
    ]
    (tmp / "build.yml").write_text(yaml.safe_dump(play))

    def build(*extra: str) -> dict:
        out = subprocess.run(
            [
                str(BIN / "ansible-playbook"),
                "-i",
                "localhost,",
                "-c",
                "local",
                str(tmp / "build.yml"),
                "-e",
                "myca_ops_wheel=x.whl",
                "-e",
                f"ansible_python_interpreter={sys.executable}",
                *extra,
            ],
            capture_output=True,
            text=True,
            env=ansible_env(),
        )
        assert out.returncode == 0, out.stdout[-3000:]
        files = {p.name: p.read_text() for p in tmp.iterdir() if p.is_file() and p.suffix in (".service", ".conf")}
        return {"names": json.loads((tmp / "names.json").read_text()), **files}

    return {
        "systemd": build("-e", "stack_service_manager=systemd"),
        "supervisord": build("-e", "stack_service_manager=supervisord"),
        "docker": build("-e", "stack_service_manager=systemd", "-e", "notes_runtime=docker"),
        "dir": tmp,
    }


def test_the_example_runs_as_a_hardened_unit_under_systemd(built):
    unit = ini(built["systemd"]["myca-notes.service"])
    assert unit["Unit"]["Description"] == "MYCA notes on 8010 (myca-ops)"
    assert unit["Service"]["ExecStart"] == "/opt/myca-notes/venv/bin/myca-notes serve --port 8010"
    assert unit["Service"]["User"] == "myca-notes"
    hardening = ini(built["systemd"]["hardening.conf"])["Service"]
    assert hardening["ProtectSystem"] == "strict" and hardening["PrivateDevices"] == "true"
    assert built["systemd"]["names"]["manager"] == "systemd"


def test_the_example_is_a_supervisord_program_on_a_pod(built):
    program = ini(built["supervisord"]["myca-notes.conf"])["program:myca-notes"]
    assert program["command"] == "/opt/myca-notes/venv/bin/myca-notes serve --port 8010"
    assert program["user"] == "myca-notes" and program["autorestart"] == "true"
    assert built["supervisord"]["names"]["manager"] == "supervisord"


def test_the_example_in_docker_is_a_container_of_its_own_image(built):
    names = built["docker"]["names"]
    assert names["manager"] == "docker"
    # Its own image, from its name: never the tag another service builds and prunes.
    assert names["image"] == "myca-notes"
    [process] = names["processes"]
    assert process["process"] == "myca-notes"  # the container's name
    assert process["argv"] == ["/opt/myca-notes/venv/bin/myca-notes", "serve", "--port", "8010"]
    assert process["user"] == "myca-notes"


def test_the_examples_handler_raises_the_flag_run_reads_and_status_reads_its_unit(built):
    names = built["systemd"]["names"]
    assert names["flag"] == "notes_restart_pending"
    [handler] = yaml.safe_load((built["dir"] / "roles/notes/handlers/main.yml").read_text())
    record = yaml.safe_load((built["dir"] / "roles/notes/vars/main.yml").read_text())["notes_service"]
    assert handler["name"] == record["handler"]
    assert handler["ansible.builtin.set_fact"] == {names["flag"]: True}
    # The row `myca-ops status` shows for it: its unit (under supervisord and Docker mapped to
    # the program and the container of the same name).
    assert names["status_reads"] == ["myca-notes"]


def test_the_examples_tasks_are_a_role_ansible_accepts(built):
    """The role's tasks parse and hand the record to python_service's entry points."""
    play = built["dir"] / "site.yml"
    play.write_text("- hosts: localhost\n  gather_facts: false\n  roles: [notes]\n")
    env = ansible_env() | {"ANSIBLE_ROLES_PATH": f"{built['dir'] / 'roles'}:{ROOT / 'roles'}"}
    out = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", "localhost,", "--syntax-check", str(play)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    tasks = yaml.safe_load((built["dir"] / "roles/notes/tasks/main.yml").read_text())
    assert [t["ansible.builtin.include_role"].get("tasks_from", "main") for t in tasks] == ["main", "run"]
    assert {t["vars"]["python_service_record"] for t in tasks} == {"{{ notes_service }}"}
