"""The website role's ticket route (TypeScript, Node's crypto only), compiled with the pinned
compiler (tests/ts, `npm ci` by make), run with this machine's Node.js, its tickets redeemed by
the bridge's own code."""

import json
import subprocess
from pathlib import Path

import jinja2
import pytest

from myca_ops.bridge.tickets import Tickets

ROOT = Path(__file__).resolve().parent.parent
TSC = ROOT / "tests" / "ts" / "node_modules" / ".bin" / "tsc"
KEY, SITE = "route-test-key-" + "r" * 24, "https://myca.example"

CALLS = r"""
const route = require(process.argv[1]);
const ask = (origin, query = "") =>
  route.POST(new Request(`http://site.internal/api/voice/ticket${query}`, {
    method: "POST", headers: origin ? { origin } : {} }));
(async () => {
  const answers = {};
  process.env.MYCA_VOICE_TICKET_ORIGINS = process.argv[2];
  for (const [name, origin, query] of [
    ["site", process.argv[2], ""], ["persona", process.argv[2], "?persona=myca"],
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
    source = jinja2.Template(template).render(ansible_managed="myca-ops test", website_ticket_ttl_s=60)
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


def test_the_route_mints_tickets_the_bridge_redeems_and_refuses_what_it_should(route_js):
    run = subprocess.run(
        ["node", "-e", CALLS, route_js, SITE],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "MYCA_VOICE_TICKET_KEY": KEY},
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    answers = json.loads(run.stdout)
    tickets = Tickets((KEY,), 60)
    site = answers["site"]
    assert site["status"] == 200 and site["cache"] == "no-store"
    minted = json.loads(site["body"])
    assert minted["expires_in"] == 60
    claims = tickets.redeem(minted["ticket"], SITE, None)  # signature, exp, aud, jti: Python verifies Node's signing
    assert claims["exp"] - claims["iat"] == 60 and "persona" not in claims
    with pytest.raises(Exception, match="already used"):
        tickets.redeem(minted["ticket"], SITE, None)
    persona = tickets.redeem(json.loads(answers["persona"]["body"])["ticket"], SITE, "myca")
    assert persona["persona"] == "myca"
    assert answers["foreign"]["status"] == 403 and "https://evil.example is not one" in answers["foreign"]["body"]
    assert answers["none"]["status"] == 403 and "no Origin" in answers["none"]["body"]
    assert answers["bad_persona"]["status"] == 400
    assert answers["no_key"] == {
        "status": 500,
        "body": "MYCA_VOICE_TICKET_KEY is not set on the server (the website role writes it into .env.local)\n",
    }
    assert KEY not in run.stdout


def test_a_ticket_node_signed_reads_in_pyjwt_and_an_old_one_fails_on_its_expiry(route_js):
    """Node's header and claims as PyJWT reads them; replayed later, the ticket fails on its expiry."""
    import jwt

    signed = subprocess.run(
        ["node", "-e", CALLS, route_js, SITE],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "MYCA_VOICE_TICKET_KEY": KEY},
        timeout=60,
    )
    ticket = json.loads(signed.stdout)["signed_at"]
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
