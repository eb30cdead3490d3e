"""The service spec's one naming rule: how a program (and each of its instances) is named by
systemd, supervisord and Docker. roles/python_service reads it; playbooks/status.yml too.

A program is {name, command, user, env_file?, python, instances?}. A program with instances
(the MAS's collectors) is a systemd template NAME@.service run as NAME@X.service, and under
supervisord and Docker one process per instance, NAME-X.
"""

from __future__ import annotations

import shlex


def service_manager(runtime: str, host_manager: str) -> str:
    """Who runs a service: the Docker engine when its runtime is docker, else the host's
    manager (systemd, or supervisord where systemd is not PID 1: roles/stack)."""
    return "docker" if runtime == "docker" else host_manager


def unit_file(program: dict) -> str:
    """The program's systemd unit file: NAME.service, or the template NAME@.service."""
    return f"{program['name']}@.service" if program.get("instances") is not None else f"{program['name']}.service"


def service_processes(programs: list[dict]) -> list[dict]:
    """One entry per running process of `programs`: its program, instance (None when the
    program has none), systemd unit and unit file, supervisord and container name, and argv
    (through myca_ops.envfile when the program has an environment file, as systemd reads it).
    A scheduled program (`every_s`) is under systemd its timer (NAME.timer, which starts the
    oneshot NAME.service), elsewhere its command with `--every`, which loops."""
    processes = []
    for program in programs:
        instances = program.get("instances")
        for instance in instances if instances is not None else [None]:
            argv = shlex.split(program["command"]) + ([] if instance is None else [instance])
            if program.get("every_s"):
                argv += ["--every", str(program["every_s"])]
            if program.get("env_file"):
                argv = [program["python"], "-m", "myca_ops.envfile", program["env_file"], *argv]
            processes.append(
                {
                    "program": program["name"],
                    "instance": instance,
                    "unit": f"{program['name']}.timer"
                    if program.get("every_s")
                    else f"{program['name']}.service"
                    if instance is None
                    else f"{program['name']}@{instance}.service",
                    "unit_file": unit_file(program),
                    "process": program["name"] if instance is None else f"{program['name']}-{instance}",
                    "argv": argv,
                    "user": program["user"],
                }
            )
    return processes


def process_name(unit: str) -> str:
    """The supervisord program or container of a systemd unit name: NAME@X(.service) is NAME-X,
    a scheduled program's NAME.timer is NAME."""
    name = unit.removesuffix(".service").removesuffix(".timer")
    return name.replace("@", "-", 1)


def images_to_prune(images: list[dict], running: str) -> list[str]:
    """The tags to remove after a deploy that is ready: every image of the service (docker_host_info's
    `images`, filtered by its name) but the one `running` names and the newest other one, which
    a rollback (*_image_tag) runs."""
    running_ids = {image["Id"] for image in images if running in (image.get("RepoTags") or [])}
    if not running_ids:  # not built here (check mode): nothing is known to be older
        return []
    older = sorted((i for i in images if i["Id"] not in running_ids), key=lambda i: i["Created"], reverse=True)
    return [tag for image in older[1:] for tag in image.get("RepoTags") or []]


class FilterModule:
    def filters(self):
        return {
            "myca_service_processes": service_processes,
            "myca_process_name": process_name,
            "myca_unit_file": unit_file,
            "myca_service_manager": service_manager,
            "myca_images_to_prune": images_to_prune,
        }
