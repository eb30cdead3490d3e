"""The website role's ticket route (TypeScript, Node's crypto only), compiled with the pinned
compiler (tests/ts, `npm ci` by make), run with this machine's Node.js, its tickets redeemed by
the bridge's own code."""

import importlib.util
import json
import subprocess
import time
from pathlib import Path

import jinja2
import pytest

from myca_ops.bridge.tickets import Tickets

ROOT = Path(__file__).resolve().parent.parent
TSC = ROOT / "tests" / "ts" / "node_modules" / ".bin" / "tsc"
KEY, SITE, BRIDGE = "route-test-key-" + "r" * 24, "https://myca.example", "edge-a"

CALLS = r"""
const route = require(process.argv[1]);
const ask = (origin, query = "") =>
  route.POST(new Request(`http://site.internal/api/voice/ticket${query}`, {
    method: "POST", headers: origin ? { origin } : {} }));
(async () => {
  const answers = {};
  process.env.MYCA_VOICE_TICKET_ORIGINS = process.argv[2];
  for (const [name, origin, query] of [
    ["site", process.argv[2], ""], ["persona", process.argv[2], "?persona=support.en"],
    ["foreign", "https://evil.example", ""], ["none", null, ""], ["bad_persona", process.argv[2], "?persona=a%20b"]]) {
    const reply = await ask(origin, query);
    answers[name] = { status: reply.status, body: await reply.text(), cache: reply.headers.get("cache-control") };
  }
  delete process.env.MYCA_VOICE_TICKET_KEY;
  const reply = await ask(process.argv[2]);
  answers.no_key = { status: reply.status, body: await reply.text() };
  answers.signed_at = route.mintTicket("k".repeat(40), "https://a.example", 60, undefined, 1700000000);
  console.log(JSON.stringify(answers));
})();
"""


@pytest.fixture(scope="module")
def route_js(tmp_path_factory) -> Path:
    if not TSC.exists():
        pytest.fail(
            f"{TSC} is missing: run `make test-fast` (it runs npm ci in tests/ts) or `npm ci --prefix tests/ts`"
        )
    work = tmp_path_factory.mktemp("route")
    template = (ROOT / "roles" / "website" / "templates" / "route.ts.j2").read_text()
    # The role's filters (the persona-name rule) and Ansible's to_json, as the role renders it.
    spec = importlib.util.spec_from_file_location("myca_filters", ROOT / "filter_plugins" / "myca.py")
    filters = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(filters)
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    env.filters.update(filters.FilterModule().filters(), to_json=json.dumps)
    source = env.from_string(template).render(
        ansible_managed="myca-ops test", website_ticket_ttl_s=60, website_bridge_host=BRIDGE
    )
    (work / "route.ts").write_text(source)
    types = ROOT / "tests" / "ts" / "node_modules" / "@types"
    compiled = subprocess.run(
        [TSC, "--strict", "--target", "es2022", "--module", "commonjs", "--typeRoots", types, "--types", "node"]
        + ["--outDir", work / "out", work / "route.ts"],
        capture_output=True,
        text=True,
    )
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    return work / "out" / "route.js"


@pytest.fixture(scope="module")
def answers(route_js) -> dict:
    """The route's answers to CALLS, run by Node.js with the key in its environment."""
    run = subprocess.run(
        ["node", "-e", CALLS, route_js, SITE],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "MYCA_VOICE_TICKET_KEY": KEY},
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert KEY not in run.stdout
    return json.loads(run.stdout)


def test_the_route_mints_tickets_the_bridge_redeems_and_refuses_what_it_should(answers):
    tickets = Tickets((KEY,), 60, BRIDGE)  # the bridge the role renders the route for
    site = answers["site"]
    assert site["status"] == 200 and site["cache"] == "no-store"
    minted = json.loads(site["body"])
    assert minted["expires_in"] == 60
    with pytest.raises(Exception, match="ticket is for bridge edge-a, not this one \\(edge-b\\)"):
        Tickets((KEY,), 60, "edge-b").redeem(minted["ticket"], SITE, None)  # another bridge with the same keys
    claims = tickets.redeem(minted["ticket"], SITE, None)  # signature, exp, aud, jti: Python verifies Node's signing
    assert claims["exp"] - claims["iat"] == 60 and "persona" not in claims and claims["bridge"] == BRIDGE
    with pytest.raises(Exception, match="already used"):
        tickets.redeem(minted["ticket"], SITE, None)
    # The server's persona-name rule, written into the route by the role: a name with a dot is one.
    persona = tickets.redeem(json.loads(answers["persona"]["body"])["ticket"], SITE, "support.en")
    assert persona["persona"] == "support.en"
    assert answers["foreign"]["status"] == 403 and "https://evil.example is not one" in answers["foreign"]["body"]
    assert answers["none"]["status"] == 403 and "no Origin" in answers["none"]["body"]
    assert answers["bad_persona"]["status"] == 400 and "1 to 64 letters, digits" in answers["bad_persona"]["body"]
    assert answers["no_key"] == {
        "status": 500,
        "body": "MYCA_VOICE_TICKET_KEY is not set on the server (the website role writes it into .env.local)\n",
    }


def test_a_ticket_node_signed_reads_in_pyjwt_and_an_old_one_fails_on_its_expiry(answers):
    """Node's header and claims as PyJWT reads them; replayed later, the ticket fails on its expiry."""
    import jwt

    ticket = answers["signed_at"]
    header = jwt.get_unverified_header(ticket)
    claims = jwt.decode(ticket, "k" * 40, algorithms=["HS256"], options={"verify_exp": False, "verify_aud": False})
    assert header == {"alg": "HS256", "typ": "JWT"}
    assert {k: claims[k] for k in ("aud", "iat", "exp")} == {
        "aud": "https://a.example",
        "iat": 1700000000,
        "exp": 1700000060,
    }
    with pytest.raises(Exception, match="expired"):
        Tickets(("k" * 40,), 60).redeem(ticket, "https://a.example", None)


SITE_SERVER = r"""
// The operator's site, in Node.js: a page, and the route handler the website role writes.
const http = require("node:http");
const route = require(process.argv[1]);
const [port, bridge, expired, foreign] = [Number(process.argv[2]), process.argv[3], process.argv[4], process.argv[5]];
const page = `<!doctype html><title>call</title><script>
const talk = (ticket) => new Promise((resolve) => {
  const ws = new WebSocket("${bridge.replace("http", "ws")}/api/chat?ticket=" + ticket);
  ws.binaryType = "arraybuffer";
  let heard = 0;
  ws.onmessage = (event) => {
    const kind = new Uint8Array(event.data)[0];
    if (kind === 0) ws.send(new Uint8Array([1, 79, 103, 103, 83]));  // after the handshake, a page of "audio"
    if (kind === 1) { heard += event.data.byteLength; ws.close(1000); }
  };
  ws.onclose = (event) => resolve({ heard, code: event.code, reason: event.reason });
});
const mint = async (url) => (await (await fetch(url, { method: "POST" })).json()).ticket;
window.done = (async () => {
  const fromSite = await mint("/api/voice/ticket");
  const fromBridge = await mint("${bridge}/api/voice/ticket");
  return JSON.stringify({
    site: await talk(fromSite), replayed: await talk(fromSite),
    bridge: await talk(fromBridge), altered: await talk(fromBridge.slice(0, -4) + "AAAA"),
    expired: await talk("${expired}"), foreign: await talk("${foreign}"),
  });
})();
</script>`;
http.createServer(async (req, res) => {
  if (req.method === "POST" && req.url.startsWith("/api/voice/ticket")) {
    const reply = await route.POST(new Request(`http://${req.headers.host}${req.url}`,
      { method: "POST", headers: { origin: req.headers.origin ?? "" } }));
    res.writeHead(reply.status, Object.fromEntries(reply.headers));
    res.end(await reply.text());
    return;
  }
  res.writeHead(200, { "Content-Type": "text/html" });
  res.end(page);
}).listen(port, "127.0.0.1", () => console.log("listening"));
"""


def test_a_page_in_chromium_mints_tickets_talks_through_the_bridge_and_is_told_why_when_refused(route_js, tmp_path):
    """Headless Chromium on the operator's site: a ticket from the site's route (Node.js) and one
    from the bridge's own route each open one session and hear the upstream (the echo's answer
    comes back as audio through the bridge); a replayed, altered, expired or foreign-origin ticket
    is closed with its reason, which a page can read (a refused upgrade would show it only 1006)."""
    import asyncio

    from report_in_browser import read_page

    from myca_ops.lab.processes import bridge, echo_upstream, free_port

    port = free_port()
    site = f"http://127.0.0.1:{port}"
    with echo_upstream(tmp_path) as upstream:
        settings = {"upstream": upstream, "ticket_keys": [KEY], "ticket_route": True, "allowed_origins": [site]}
        with bridge(tmp_path, **settings) as base:
            env = {"PATH": "/usr/bin:/bin", "MYCA_VOICE_TICKET_KEY": KEY, "MYCA_VOICE_TICKET_ORIGINS": site}
            expired = Tickets((KEY,), 60).mint(site, now=time.time() - 600)
            foreign = Tickets((KEY,), 60).mint("https://other.example")
            server = subprocess.Popen(
                ["node", "-e", SITE_SERVER, route_js, str(port), base, expired, foreign],
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                assert server.stdout.readline().strip() == "listening"
                seen = asyncio.run(read_page(site + "/", 60, "window.done"))
            finally:
                server.kill()
                server.wait()
    assert seen["site"] == {"heard": 5, "code": 1000, "reason": "client closed"}, seen
    assert seen["bridge"] == {"heard": 5, "code": 1000, "reason": "client closed"}, seen
    assert seen["replayed"] == {
        "heard": 0,
        "code": 4401,
        "reason": "ticket already used: each ticket opens one session",
    }
    assert seen["altered"]["code"] == 4401 and "signature does not verify" in seen["altered"]["reason"], seen
    assert seen["expired"] == {"heard": 0, "code": 4401, "reason": "ticket expired: mint a new one for each session"}
    assert seen["foreign"] == {
        "heard": 0,
        "code": 4403,
        "reason": f"ticket was minted for https://other.example, not {site}",
    }
