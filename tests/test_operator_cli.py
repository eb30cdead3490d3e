"""An operator's first deploy, from the control node alone (fast tier, no lab): the wheel from a
venv `make setup` makes, under any --limit; `myca-ops` saying why a run failed; --check diffs;
the version of what is deployed."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from conftest import BIN, ROOT, ansible_env
from myca_ops.version import find_commit, tree_version

LOCAL = f"ansible_connection: local\n      ansible_python_interpreter: {sys.executable}\n"


def project(tmp_path: Path, tasks: str, hosts: str = "") -> Path:
    """A tiny project (site.yml with `tasks`, an inventory `t` of local hosts) for the real myca-ops."""
    (tmp_path / "ansible.cfg").write_text("[defaults]\n")
    (tmp_path / "site.yml").write_text(f"- hosts: all\n  gather_facts: false\n  tasks:\n{tasks}")
    inventory = tmp_path / "inventory" / "t"
    inventory.mkdir(parents=True)
    (inventory / "hosts.yml").write_text(hosts or f"all:\n  hosts:\n    here:\n      {LOCAL}")
    return tmp_path


def myca_ops(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "myca-ops"), *args], cwd=cwd, capture_output=True, text=True, env=ansible_env())


def test_a_wrong_vault_password_says_decryption_failed_not_no_host(tmp_path):
    from ansible.constants import DEFAULT_VAULT_ID_MATCH
    from ansible.parsing.vault import VaultLib, VaultSecret

    # A vaulted group_vars file, as production.md has the operator make one: opened when the inventory loads.
    vault = VaultLib([(DEFAULT_VAULT_ID_MATCH, VaultSecret(b"right"))])
    root = project(tmp_path, "    - ansible.builtin.debug:\n        msg: hello\n")
    (root / "inventory" / "t" / "group_vars").mkdir()
    (root / "inventory" / "t" / "group_vars" / "all.yml").write_bytes(vault.encrypt("stack_secret: s\n"))
    (tmp_path / "vault-pass").write_text("wrong\n")
    out = myca_ops(root, "deploy", "t", "--vault-password-file", str(tmp_path / "vault-pass"))
    assert out.returncode == 5, out
    assert "myca-ops: nothing ran: " in out.stderr and "Decryption failed" in out.stderr, out.stderr
    assert "no host in the inventory" not in out.stderr


def test_a_failed_task_shows_the_tail_of_its_stderr(tmp_path):
    script = "echo one >&2; echo the-disk-is-full >&2; exit 3"
    root = project(tmp_path, f"    - name: Run the step\n      ansible.builtin.shell: '{script}'\n")
    out = myca_ops(root, "deploy", "t")
    assert out.returncode == 2, out
    failed = [line for line in out.stdout.splitlines() if line.startswith("failed: here: Run the step")]
    assert failed, out.stdout
    assert "the-disk-is-full" in out.stdout and "non-zero return code" in out.stdout


def test_check_prints_the_diff_and_changes_nothing(tmp_path):
    target = tmp_path / "setting.conf"
    target.write_text("slots = 4\n")
    tasks = (
        "    - name: Write the setting\n      ansible.builtin.copy:\n"
        f"        dest: {target}\n        content: \"slots = 8\\n\"\n        mode: '0644'\n"
    )
    looped = tmp_path / "persona.conf"
    looped.write_text("voice = a\n")
    tasks += (
        "    - name: Write each persona\n      ansible.builtin.copy:\n"
        "        dest: '{{ item }}'\n        content: \"voice = b\\n\"\n        mode: '0644'\n"
        f"      loop: [{looped}]\n"
    )
    out = myca_ops(project(tmp_path, tasks), "deploy", "t", "--check")
    assert out.returncode == 0, out
    assert "-slots = 4" in out.stderr and "+slots = 8" in out.stderr, out.stderr
    assert "-voice = a" in out.stderr and "+voice = b" in out.stderr, out.stderr  # a loop's items
    assert target.read_text() == "slots = 4\n" and looped.read_text() == "voice = a\n"


def test_extra_vars_from_a_file_tags_and_skip_tags_pass_through(tmp_path):
    tasks = (
        "    - name: Say the colour\n      ansible.builtin.assert:\n        that: colour == 'blue'\n      tags: [a]\n"
        "    - name: Never\n      ansible.builtin.fail:\n      tags: [b]\n"
    )
    root = project(tmp_path, tasks)
    (tmp_path / "vars.yml").write_text("colour: blue\n")
    out = myca_ops(root, "deploy", "t", "-e", f"@{tmp_path / 'vars.yml'}", "--skip-tags", "b", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["hosts"]["here"]["failed"] == 0
    assert myca_ops(root, "deploy", "t", "-e", "colour=red", "--tags", "a").returncode == 2


@pytest.mark.parametrize(
    "args, code, said",
    [
        (["deploy"], 64, "the following arguments are required: env"),
        (["deploy", "t", "--bogus"], 64, "unrecognized arguments: --bogus"),
        (["deploy", "t", "-e", "novalue"], 64, "-e takes K=V, @FILE or JSON, got 'novalue'"),
        (["deploy", "t", "-e", "@/nonexistent.yml"], 1, "-e @/nonexistent.yml: no such file"),
        (["deploy", "staging"], 1, "no inventory 'staging': choose one of t"),
    ],
)
def test_usage_errors_have_their_own_exit_code(tmp_path, args, code, said):
    out = myca_ops(project(tmp_path, "    - ansible.builtin.debug:\n"), *args)
    assert (out.returncode, said in out.stderr) == (code, True), out.stderr


def test_the_version_changes_with_the_code_and_not_otherwise(tmp_path):
    package = tmp_path / "myca_ops"
    shutil.copytree(ROOT / "src" / "myca_ops", package, ignore=shutil.ignore_patterns("__pycache__"))
    before = tree_version(package)
    assert before == tree_version(ROOT / "src" / "myca_ops")
    (package / "sessions.py").touch()  # a new mtime, the same bytes
    (package / "lab" / "weights.py").write_text("# the lab's tooling is not in the wheel\n")
    assert tree_version(package) == before
    with (package / "sessions.py").open("a") as f:
        f.write("\n")
    assert tree_version(package) != before

    out = subprocess.run([str(BIN / "myca-ops"), "--version"], capture_output=True, text=True)
    assert out.stdout.strip() == f"myca-ops {tree_version()}"


def test_a_rollback_finds_the_commit_that_built_a_version(tmp_path):
    package = tmp_path / "src" / "myca_ops"
    package.mkdir(parents=True)

    def commit(text: str) -> tuple[str, str]:
        (package / "server.py").write_text(text)
        git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
        subprocess.run([*git, "add", "-A"], check=True)
        subprocess.run([*git, "commit", "-qm", text], check=True)
        head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout
        return tree_version(package), head.strip()

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    first, second = commit("old = 1\n"), commit("new = 2\n")
    (tmp_path / "README").write_text("docs change no version\n")
    assert find_commit(first[0], tmp_path) == first[1]
    assert find_commit(second[0], tmp_path) == second[1]
    assert find_commit("0.1.0+000000000000", tmp_path) is None


@pytest.fixture(scope="module")
def setup_venv(tmp_path_factory):
    """A venv as Python 3.12 and newer make it (no setuptools, no wheel), given the control-node
    pins that the build needs, as `make setup` installs them from pyproject.toml."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    control = {pin.split("==")[0].lower(): pin for pin in pyproject["project"]["optional-dependencies"]["control"]}
    backend = [control.get(req.split("==")[0].lower()) for req in pyproject["build-system"]["requires"]]
    assert None not in backend, f"`make setup` ([control]) does not install the build backend {backend}"
    venv = tmp_path_factory.mktemp("setup-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run([*pip, "uninstall", "-y", "setuptools", "wheel"], check=True, capture_output=True)
    subprocess.run([*pip, "install", *backend], check=True, capture_output=True)
    assert subprocess.run([str(python), "-c", "import setuptools"], capture_output=True).returncode != 0
    return python


def test_the_wheel_builds_once_from_a_setup_venv_without_setuptools_under_any_limit(setup_venv, tmp_path):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        "all:\n  children:\n    gpu_hosts:\n      hosts:\n        gpu-1:\n    bridge_hosts:\n      hosts:\n"
        "        bridge-1:\n        bridge-2:\n"
    )
    dist = tmp_path / "dist"
    out = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            str(ROOT / "playbooks" / "build_wheel.yml"),
            "-i",
            str(inventory),
            "--limit",
            "bridge-1:bridge-2",
            "--tags",
            "website",
            "-e",
            f"myca_ops_build_python={setup_venv} myca_ops_dist={dist}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=ansible_env(ANSIBLE_STDOUT_CALLBACK="json"),
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr
    tasks = json.loads(out.stdout)["plays"][0]["tasks"]
    builds = [t for t in tasks if t["task"]["name"].startswith("Build the wheel")]
    assert len(builds) == 1 and list(builds[0]["hosts"]) == ["bridge-1"]  # once per run, on the control node
    wheels = list(dist.glob("*.whl"))
    assert [w.name for w in wheels] == [f"myca_ops-{tree_version()}-py3-none-any.whl"]
    names = subprocess.run(
        [str(setup_venv), "-m", "zipfile", "-l", str(wheels[0])], capture_output=True, text=True, check=True
    ).stdout
    assert "myca_ops/voice/server.py" in names and "myca_ops/mas/migrations/0001_initial.sql" in names
    assert "myca_ops/lab/" not in names


def test_a_host_that_does_not_answer_is_unreachable_with_its_reason_even_when_a_play_reads_past_it(tmp_path):
    """status.yml ignores an unreachable host to read the others: the run still says which and why."""
    tasks = "    - name: Reach it\n      ansible.builtin.ping:\n      ignore_unreachable: true\n"
    hosts = (
        "all:\n  hosts:\n    gone:\n      ansible_connection: ssh\n      ansible_host: 127.0.0.1\n"
        "      ansible_port: 9\n      ansible_ssh_common_args: -o ConnectTimeout=5\n"
    )
    out = myca_ops(project(tmp_path, tasks, hosts), "deploy", "t", "--json")
    body = json.loads(out.stdout)
    assert out.returncode == 4 and body["hosts"]["gone"]["unreachable"] == 1, body
    assert any(f.startswith("gone: Reach it: ") and "Connection refused" in f for f in body["failures"]), body
