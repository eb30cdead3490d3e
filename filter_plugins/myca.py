"""Filters the playbooks use to speak to the bridge as a client would."""

from __future__ import annotations


def service_token(tokens, scope: str = "session") -> str:
    """The first of bridge_tokens with `scope` ({token, scopes} entries; a plain string has the
    session scope only), or '' when there is none."""
    from myca_ops.bridge.config import parse_token

    return next((t.value for t in map(parse_token, tokens or []) if scope in t.scopes), "")


def token_scopes(tokens, value: str) -> list[str]:
    """The scopes bridge_tokens gives `value` (none when it is not one of them)."""
    from myca_ops.bridge.config import parse_token

    return sorted(next((t.scopes for t in map(parse_token, tokens or []) if value and t.value == value), []))


def voice_ticket(keys, origin: str, bridge: str = "", ttl_s: float = 60) -> str:
    """A ticket for one session from a page at `origin` at the bridge named `bridge` (its inventory
    name), signed with the first of bridge_ticket_keys, minted on the control node when the task
    runs (myca_ops.bridge.tickets, as the bridge mints)."""
    from myca_ops.bridge.tickets import Tickets

    return Tickets(tuple(keys), ttl_s, bridge).mint(origin)


def merged_load(shares: list) -> dict:
    """One load test from the shares its caller hosts ran (myca_ops.voice.loadtest.merge)."""
    from myca_ops.voice.loadtest import merge

    return merge(list(shares))


def persona_rule(part: str) -> str:
    """The persona-name rule (myca_ops.voice.persona): 'pattern' (a regular expression of the whole
    name, valid in Python and JavaScript) or 'text' (how an error message says it)."""
    from myca_ops.voice.persona import NAME_PATTERN, NAME_RULE

    return {"pattern": NAME_PATTERN, "text": NAME_RULE}[part]


class FilterModule:
    def filters(self):
        return {
            "myca_merged_load": merged_load,
            "myca_persona_rule": persona_rule,
            "myca_service_token": service_token,
            "myca_token_scopes": token_scopes,
            "myca_voice_ticket": voice_ticket,
        }
