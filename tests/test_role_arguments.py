"""A wrongly typed role variable fails at role start, naming the variable."""

import subprocess
import sys
import time

import pytest

from conftest import BIN, ROOT, ansible_env, serve_one_route


def run_role(tmp_path, role: str, variables: str, check: bool = True) -> subprocess.CompletedProcess:
    play = tmp_path / "play.yml"
    play.write_text(
        f"- hosts: localhost\n  gather_facts: false\n  roles:\n    - role: {role}\n      vars:\n{variables}"
    )
    return run_play(play, *(["--check"] if check else []))


def run_play(play, *options: str) -> subprocess.CompletedProcess:
    """ansible-playbook on localhost with this interpreter."""
    return subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", *options, str(play)]
        + ["-e", f"ansible_python_interpreter={sys.executable}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=ansible_env(),
    )


def test_wrong_type_names_the_variable(tmp_path):
    out = run_role(tmp_path, "gpu_host", "        gpu_host_min_free_gb: plenty\n")
    assert out.returncode != 0
    assert "gpu_host_min_free_gb" in out.stdout
    assert "Validating arguments against arg spec" in out.stdout
    assert "Install the C compiler" not in out.stdout  # failed before any task of the role


def test_wrong_bool_names_the_variable(tmp_path):
    out = run_role(tmp_path, "gpu_host", "        gpu_host_require_gpu: sometimes\n")
    assert out.returncode != 0
    assert "gpu_host_require_gpu" in out.stdout


def test_bridge_names_a_wrong_upstream_before_installing(tmp_path):
    out = run_role(tmp_path, "bridge", "        bridge_upstream: http://gpu-host:8998\n")
    assert out.returncode != 0
    assert "bridge_upstream must be a ws:// or wss:// URL, got http://gpu-host:8998" in out.stdout
    assert "Install venv support" not in out.stdout


def test_bridge_tls_without_a_certificate_says_why(tmp_path):
    out = run_role(tmp_path, "bridge", "        bridge_upstream: ws://g:8998/api/chat\n        bridge_tls: true\n")
    assert out.returncode != 0
    assert "bridge_tls needs bridge_tls_cert and bridge_tls_key" in out.stdout


@pytest.mark.parametrize("role", ["bridge", "mas"])
def test_role_pins_match_the_package_extra(role):
    import tomllib
    import yaml

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][role]
    defaults = yaml.safe_load((ROOT / f"roles/{role}/defaults/main.yml").read_text())
    assert defaults[f"{role}_packages"] == extra


def test_website_without_a_folder_says_what_to_set(tmp_path):
    out = run_role(tmp_path, "website", "        website_ws_url: ws://bridge:8999/api/chat\n")
    assert out.returncode != 0
    assert "website_dir is not set" in out.stdout


def test_website_sets_the_url_keeps_other_lines_and_backs_up(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    env = site / ".env.local"
    original = "# settings\nNEXT_PUBLIC_SITE_NAME=MYCA\nexport NEXT_PUBLIC_PERSONAPLEX_WS_URL=ws://old:8998/api/chat\nSECRET=s3\n"
    env.write_text(original)
    env.chmod(0o600)
    variables = f"        website_dir: {site}\n        website_ws_url: wss://voice.example:8999/api/chat\n"

    first = run_role(tmp_path, "website", variables, check=False)
    assert first.returncode == 0, first.stdout
    assert env.read_text() == original.replace(
        "export NEXT_PUBLIC_PERSONAPLEX_WS_URL=ws://old:8998/api/chat",
        "NEXT_PUBLIC_PERSONAPLEX_WS_URL=wss://voice.example:8999/api/chat",
    )
    assert env.stat().st_mode & 0o777 == 0o600  # the operator's mode is kept
    backups = list(site.glob(".env.local.*~"))
    assert len(backups) == 1 and backups[0].read_text() == original
    assert "restart the dev server" in first.stdout

    second = run_role(tmp_path, "website", variables, check=False)
    assert second.returncode == 0 and "changed=0" in second.stdout
    assert len(list(site.glob(".env.local.*~"))) == 1


def test_an_example_secret_is_refused_by_name_without_showing_it(tmp_path):
    example = "example-bridge-token-replace-me-0001"  # inventory/production's published example
    out = run_role(
        tmp_path,
        "bridge",
        f"        bridge_upstream: ws://g:8998/api/chat\n        bridge_tokens: [{example}]\n        bridge_mas_token: {'m' * 20}\n",
    )
    assert out.returncode != 0
    assert "bridge_tokens: the documented example value" in out.stdout
    assert "bridge_mas_token: the documented" not in out.stdout  # its own value is fine
    assert example not in out.stdout
    assert "Install venv support" not in out.stdout


def test_the_mas_needs_an_events_token(tmp_path):
    out = run_role(tmp_path, "mas", "        mas_db_password: a-real-password-here\n")
    assert out.returncode != 0
    assert "mas_events_token must be at least 16 characters (it is 0)" in out.stdout


MOSHI_BASE = "        moshi_myca_ops_wheel: /nonexistent.whl\n        moshi_hf_revision: abc123\n"


@pytest.mark.parametrize(
    ("personas", "says"),
    [
        (
            "        moshi_personas: [{name: myca, text: Hi, voice: myca.wav}]\n",
            "Voice(s) myca.wav of moshi_personas are not among moshi_voices (none): add the WAV files there.",
        ),
        (
            "        moshi_personas: [{name: myca, text: Hi}]\n        moshi_default_persona: pirate\n",
            "moshi_default_persona is pirate, not one of moshi_personas (myca).",
        ),
        ("        moshi_personas: [{name: myca}]\n", "Each persona needs a name and a text"),
        ("        moshi_personas: [{name: a, text: x}, {name: a, text: y}]\n", "Persona names must differ: a, a"),
        (
            "        moshi_personas: [{name: a, text: x}]\n        moshi_server: upstream\n",
            "moshi_personas are for the batched server",
        ),
    ],
)
def test_moshi_names_what_is_wrong_with_the_personas_before_installing(tmp_path, personas, says):
    out = run_role(tmp_path, "moshi", MOSHI_BASE + personas)
    assert out.returncode != 0
    assert says in out.stdout, out.stdout[-2000:]
    assert out.stdout.split("TASK [")[-1].startswith("moshi : Check the personas")  # stopped there, nothing installed


def test_personaplexs_own_server_refuses_half_and_its_checks_send_both_prompts(tmp_path):
    for server in ("upstream", "batched"):  # NVIDIA serves its model in bf16 only, on either server
        own = f"        moshi_flavour: personaplex\n        moshi_server: {server}\n        moshi_half: true\n"
        out = run_role(tmp_path, "moshi", MOSHI_BASE + own)
        assert out.returncode != 0
        assert "would run PersonaPlex's model in fp16, which NVIDIA never does" in out.stdout, out.stdout[-1500:]
    # On the batched server a persona may take one of its checkpoint's .pt voices, not an unknown WAV.
    batched = (
        "        moshi_flavour: personaplex\n        moshi_default_persona: m\n"
        "        moshi_personas: [{name: m, text: Hi, voice: NATF2.pt}]\n"
    )
    out = run_role(tmp_path, "moshi", MOSHI_BASE + batched)
    assert "TASK [python_service : Copy the myca_ops wheel" in out.stdout, out.stdout[-1500:]  # past every check
    out = run_role(tmp_path, "moshi", MOSHI_BASE + batched.replace("NATF2.pt", "mine.wav"))
    assert (
        "Voice(s) mine.wav of moshi_personas are not among moshi_voices (none): add the WAV files there (a PersonaPlex voice"
        in out.stdout
    )


@pytest.mark.parametrize(
    ("variables", "says"),
    [
        ("        moshi_personas: []\n", "needs moshi_default_persona (the persona of a caller"),
        (
            "        moshi_personas: [{name: m, text: Hi, voice: NATF2.pt}, {name: plain, text: Hi}]\n"
            "        moshi_default_persona: m\n",
            "Persona(s) plain have no voice: PersonaPlex always starts from a voice prompt",
        ),
    ],
)
def test_personaplex_on_the_batched_server_never_serves_a_caller_without_a_voice_prompt(tmp_path, variables, says):
    out = run_role(tmp_path, "moshi", MOSHI_BASE + "        moshi_flavour: personaplex\n" + variables)
    assert out.returncode != 0
    assert says in out.stdout, out.stdout[-2000:]


def test_a_persona_name_with_a_dot_is_taken_and_a_name_outside_the_rule_is_refused_with_it(tmp_path):
    dotted = "        moshi_personas: [{name: support.en, text: Hi}]\n        moshi_default_persona: support.en\n"
    out = run_role(tmp_path, "moshi", MOSHI_BASE + dotted)
    assert "TASK [python_service : Copy the myca_ops wheel" in out.stdout, out.stdout[-1500:]  # past every check
    out = run_role(tmp_path, "moshi", MOSHI_BASE + "        moshi_personas: [{name: 'a b', text: Hi}]\n")
    assert out.returncode != 0
    assert "Persona name(s) a b in moshi_personas: a name is 1 to 64 letters, digits" in out.stdout, out.stdout[-2000:]


def test_personaplex_role_url_sends_both_prompts(tmp_path):
    play = tmp_path / "url.yml"
    play.write_text(
        "- hosts: localhost\n  gather_facts: false\n"
        "  vars_files: [../roles/moshi/defaults/main.yml, ../roles/moshi/vars/main.yml]\n"
        "  tasks:\n    - ansible.builtin.debug: {var: moshi_chat_url}\n".replace("../", f"{ROOT}/")
    )
    shown = run_play(play, "-e", "moshi_flavour=personaplex", "-e", "moshi_server=upstream")
    # The role's wait and verify's probe open their session with this URL: both prompts, encoded.
    expected = "ws://127.0.0.1:8998/api/chat?text_prompt=You+enjoy+having+a+good+conversation.&voice_prompt=NATF2.pt"
    assert expected in shown.stdout, shown.stdout[-1500:]
    shown = run_play(play, "-e", "moshi_flavour=personaplex")  # the batched server refuses client prompts
    assert '"moshi_chat_url": "ws://127.0.0.1:8998/api/chat"' in shown.stdout, shown.stdout[-1500:]


# NVIDIA's package's own pins (moshi/pyproject.toml of NVIDIA/personaplex at moshi_personaplex_revision).
PERSONAPLEX_PINS = {
    "numpy": ">=1.26,<2.2",
    "safetensors": ">=0.4.0,<0.5",
    "huggingface-hub": ">=0.24,<0.25",
    "einops": "==0.7",
    "sentencepiece": "==0.2",
    "sphn": ">=0.1.4,<0.2",
    "torch": ">=2.2.0,<2.5",
    "aiohttp": ">=3.10.5,<3.11",
}


def test_personaplexs_own_server_gets_a_venv_of_its_packages_pins(tmp_path):
    """pip steps for NVIDIA's server: its package with its own dependencies and a torch inside its
    pin; none of the role's pins for Kyutai's package (sphn>=0.2, aiohttp>=3.11 exclude its pins)."""
    import json

    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    play = tmp_path / "steps.yml"
    play.write_text(
        "- hosts: localhost\n  gather_facts: false\n"
        f"  vars_files: [{ROOT}/roles/moshi/defaults/main.yml, {ROOT}/roles/moshi/vars/main.yml,"
        f" {ROOT}/roles/python_service/defaults/main.yml, {ROOT}/roles/python_service/vars/main.yml]\n"
        "  vars: {python_service_record: '{{ moshi_service }}'}\n"
        "  tasks:\n    - ansible.builtin.copy: {content: '{{ moshi_pip_steps | to_json }}', dest: "
        f"{tmp_path}/steps.json, mode: '0644'}}\n"
        "    - ansible.builtin.copy: {content: '{{ python_service_pip_git | to_json }}', dest: "
        f"{tmp_path}/apt.json, mode: '0644'}}\n"
    )

    def steps(*variables: str) -> list[dict]:
        extra = [arg for v in ('{"gpu_facts": {"gpu_count": 0}}', *variables) for arg in ("-e", v)]
        out = run_play(play, *extra)
        assert out.returncode == 0, out.stdout[-1500:]
        return json.loads((tmp_path / "steps.json").read_text())

    def git_installed() -> bool:  # the host (and the image) gets git for pip to clone with
        return json.loads((tmp_path / "apt.json").read_text()) == ["git"]

    own = steps("moshi_flavour=personaplex", "moshi_server=upstream")
    assert git_installed()
    requirements = [Requirement(p) for step in own for p in step["packages"]]
    assert [r.name for r in requirements] == ["torch", "moshi-personaplex"]
    assert not any(step.get("no_deps") for step in own)  # pip resolves its pins
    assert requirements[1].url.endswith("personaplex@3428dfd95309a7f3c84fd93259ded0f810d1ff91#subdirectory=moshi")
    torch_pin = next(iter(requirements[0].specifier)).version
    assert SpecifierSet(PERSONAPLEX_PINS["torch"]).contains(torch_pin)
    # From the operator's wheels, by name (pip --no-index takes no URL).
    wheels = steps("moshi_flavour=personaplex", "moshi_server=upstream", "moshi_wheelhouse=/srv/wheels")
    assert wheels[1]["packages"] == ["moshi-personaplex"] and not git_installed()
    # Kyutai's package, and PersonaPlex's checkpoint on the batched server, keep the role's pins.
    for variables in ((), ("moshi_flavour=personaplex",)):
        kyutai = [Requirement(p) for step in steps(*variables) for p in step["packages"]]
        assert [r.name for r in kyutai][0] == "torch" and kyutai[-1].name == "moshi"
        clashes = [r.name for r in kyutai if r.name in PERSONAPLEX_PINS and r.name != "torch"]
        assert {"sphn", "aiohttp"} <= set(clashes) and not git_installed()


def test_website_builds_when_its_inputs_change_and_retries_a_failed_build(tmp_path):
    """A production site inlines NEXT_PUBLIC_ values at build: the build runs (as the folder's owner,
    before the restart) when .env.local changed, not on a run that changed nothing, and a failed
    build is tried again on the next run."""
    site = tmp_path / "site"
    site.mkdir()
    log = site / "build.log"

    def converge(url: str, build: str) -> subprocess.CompletedProcess:
        variables = (
            f"        website_dir: {site}\n        website_ws_url: {url}\n        website_build_command: '{build}'\n"
        )
        return run_role(tmp_path, "website", variables, check=False)

    ok = "grep -c PERSONAPLEX .env.local >> build.log"
    assert converge("ws://a:8999/api/chat", ok).returncode == 0
    assert log.read_text() == "1\n"
    again = converge("ws://a:8999/api/chat", ok)
    assert again.returncode == 0 and "changed=0" in again.stdout and log.read_text() == "1\n"

    failed = converge("ws://b:8999/api/chat", "echo the-build-broke >&2; exit 1")
    assert failed.returncode != 0 and "the-build-broke" in failed.stdout
    assert converge("ws://b:8999/api/chat", ok).returncode == 0  # .env.local unchanged now: built all the same
    assert log.read_text() == "1\n1\n"


def test_website_url_takes_a_platforms_mapped_bridge_port(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    play = tmp_path / "play.yml"
    play.write_text(
        "- hosts: localhost\n  gather_facts: false\n  roles:\n    - stack\n    - role: website\n      vars:\n"
        f"        website_dir: {site}\n        website_bridge_address: pod-1.example\n        website_bridge_port: 40123\n"
    )
    out = run_play(play)
    assert out.returncode == 0, out.stdout
    assert "NEXT_PUBLIC_PERSONAPLEX_WS_URL=ws://pod-1.example:40123/api/chat\n" in (site / ".env.local").read_text()


class SharedGenerator:
    """NVIDIA's own server's session rules (its moshi/server.py at moshi_personaplex_revision): each
    connection sets the prompt of the one generator all share, then waits for the lock; inside it the
    prompt is stepped (here 1 s), then the handshake.  It listens once its model is loaded, with no
    /healthz (404).  `personas`: the prompt each session ended up with."""

    def __init__(self) -> None:
        import threading

        self.connections, self.personas, self.ready = 0, [], threading.Event()
        self.released = threading.Event()  # set by the test: the first caller's prompt may end
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    def run(self) -> None:
        import asyncio

        from aiohttp import web

        async def chat(request):
            self.connections += 1
            self.prompt = request.query.get("text_prompt")  # before the lock, as NVIDIA's server does
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            async with lock:
                # The prompt's steps last until a second connection comes or the test releases it,
                # so a slow machine changes no outcome.
                deadline = time.monotonic() + 20
                while self.connections < 2 and not self.released.is_set() and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                self.personas.append(self.prompt)
                await ws.send_bytes(b"\x00")
                await ws.close()
            return ws

        async def main():
            nonlocal lock
            lock = asyncio.Lock()
            _, self.port = await serve_one_route("/api/chat", chat)
            self.ready.set()
            await asyncio.Event().wait()

        lock = None
        asyncio.run(main())


def test_the_roles_wait_on_nvidias_own_server_leaves_a_callers_persona_alone(tmp_path):
    """The role's wait, as the role renders it for moshi_server: upstream with PersonaPlex, run while
    a caller is in their prompt: the caller keeps their persona and the wait opened no session.
    The same wait for the batched server (a handshake) would have overwritten it."""
    import asyncio
    import threading

    import aiohttp

    play = tmp_path / "wait.yml"
    play.write_text(
        "- hosts: localhost\n  gather_facts: false\n"
        f"  vars_files: [{ROOT}/roles/moshi/defaults/main.yml, {ROOT}/roles/moshi/vars/main.yml]\n"
        "  tasks:\n    - ansible.builtin.copy: {content: '{{ moshi_wait_command }}', dest: "
        f"{tmp_path}/wait.txt, mode: '0644'}}\n"
    )

    def wait_argv(*variables: str) -> list[str]:
        out = run_play(play, *[arg for v in variables for arg in ("-e", v)])
        assert out.returncode == 0, out.stdout[-1500:]
        import shlex

        argv = shlex.split((tmp_path / "wait.txt").read_text())
        assert argv[0].endswith("/bin/myca-moshi") and "--unit" in argv
        argv = argv[1:]
        argv[argv.index("--url") + 1] = argv[argv.index("--url") + 1].replace(":8998", f":{server.port}")
        del argv[argv.index("--unit") : argv.index("--unit") + 2]  # no systemd unit here
        return [sys.executable, "-m", "myca_ops.voice.launcher", *argv]

    async def caller(url: str) -> None:
        async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
            await ws.receive(timeout=10)

    own = ["moshi_flavour=personaplex", "moshi_server=upstream"]
    server = SharedGenerator()
    assert "--no-session" not in wait_argv("moshi_flavour=personaplex")  # the batched server shares nothing
    for keeps in (True, False):  # the role's wait; then the same with --no-session taken out (the old wait)
        server = SharedGenerator()
        argv = [a for a in wait_argv(*own) if keeps or a != "--no-session"]
        talking = threading.Thread(
            target=asyncio.run, args=(caller(f"ws://127.0.0.1:{server.port}/api/chat?text_prompt=caller"),)
        )
        talking.start()
        deadline = time.monotonic() + 15
        while not server.connections and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.connections == 1, "the caller did not reach the stand-in server"
        waited = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        server.released.set()
        talking.join(30)
        assert waited.returncode == 0, waited.stderr
        if keeps:
            assert "no session opened" in waited.stdout
            assert server.personas == ["caller"] and server.connections == 1
        else:  # a handshake wait takes a session: the caller in their prompt now has the wait's persona
            assert server.personas[0] == "You enjoy having a good conversation." and server.connections == 2


def test_every_argument_spec_default_is_the_roles_default():
    """The spec's default is documentation (Ansible sets variables from defaults/main.yml alone):
    one that differs tells the operator a value the role does not use. A default computed by a
    template has no literal twin, so its spec describes it instead of giving one."""
    import yaml

    given, drifted = 0, []

    def compare(where: str, options: dict, defaults: dict) -> None:
        nonlocal given
        for name, option in options.items():
            if "default" in option:
                given += 1
                if defaults.get(name, "(none)") != option["default"]:
                    drifted.append(
                        f"{where}: {name}: spec {option['default']!r}, defaults {defaults.get(name, '(none)')!r}"
                    )

    for spec in sorted(ROOT.glob("roles/*/meta/argument_specs.yml")):
        role = spec.parts[-3]
        defaults = yaml.safe_load((ROOT / "roles" / role / "defaults" / "main.yml").read_text()) or {}
        for entry in yaml.safe_load(spec.read_text())["argument_specs"].values():
            compare(f"roles/{role}", entry.get("options") or {}, defaults)
    # A service's record (python_service_record): its fields' defaults are python_service_defaults.
    record = yaml.safe_load((ROOT / "roles/python_service/meta/argument_specs.yml").read_text())["argument_specs"]
    record_defaults = yaml.safe_load((ROOT / "roles/python_service/defaults/main.yml").read_text())[
        "python_service_defaults"
    ]
    compare(
        "roles/python_service: python_service",
        record["main"]["options"]["python_service_record"]["options"],
        record_defaults,
    )
    assert given > 200  # the specs were read
    assert not drifted, "\n".join(drifted)
