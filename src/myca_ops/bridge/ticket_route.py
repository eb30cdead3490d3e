"""POST /api/voice/ticket: the bridge's own ticket minting (bridge_ticket_route)."""

from __future__ import annotations

from aiohttp import web

from myca_ops.bridge.state import CONFIG, STATE, origin_of
from myca_ops.voice.persona import NAME as persona_name
from myca_ops.voice.persona import NAME_RULE


async def mint_ticket(request: web.Request) -> web.Response:
    """POST /api/voice/ticket (bridge_ticket_route, for sites with no server code of their own):
    a ticket for the page at the request's Origin, which must be one of allowed_origins, at most
    ticket_rate_per_min a minute per address.  Anyone who can load the page can mint within that
    rate: guarding more (a login) is the operator's own server's job."""
    config, state = request.app[CONFIG], request.app[STATE]
    origin = origin_of(request)
    if origin is None or origin not in config.allowed_origins:
        raise web.HTTPForbidden(
            text=f"tickets are minted for the pages of bridge_allowed_origins; {origin or 'no Origin'} is not one\n"
        )
    cors = {"Access-Control-Allow-Origin": origin, "Vary": "Origin", "Cache-Control": "no-store"}
    if request.method == "OPTIONS":  # a preflight (a page that posts JSON)
        cors.update({"Access-Control-Allow-Methods": "POST", "Access-Control-Allow-Headers": "Content-Type"})
        return web.Response(status=204, headers=cors)
    persona = request.query.get("persona")
    if persona is not None and not persona_name.fullmatch(persona):
        raise web.HTTPBadRequest(text=f"persona must be {NAME_RULE}\n", headers=cors)
    if not state.ticket_rate.allow(request.remote or ""):
        raise web.HTTPTooManyRequests(
            text=f"at most {config.ticket_rate_per_min} tickets a minute per address\n",
            headers={**cors, "Retry-After": "60"},
        )
    assert state.tickets is not None  # the route needs ticket keys (BridgeConfig refuses it without)
    ticket = state.tickets.mint(origin, persona)
    return web.json_response({"ticket": ticket, "expires_in": int(config.ticket_ttl_s)}, headers=cors)
