"""Tickets: a browser's pass for one voice session, minted on a server, redeemed at the bridge.

A ticket is a JWT (RFC 7519) signed with HS256, the format every web stack can sign (Node's
crypto in the website role's route handler, PyJWT here).  Claims: ``exp`` (at most the bridge's
``ticket_ttl_s`` after ``iat``), ``iat``, ``jti`` (random), ``aud`` (the Origin it was minted for:
the page's), and optionally ``persona`` (it overrides the URL's ``persona=``; asking for another
is refused).  The algorithm is pinned: a ticket with ``alg`` none, or signed any other way, is a
bad signature, never a pass.  Keys: ``ticket_keys``, a list: the first signs, all verify, so a key
is rotated by putting the new one first and removing the old one a TTL later.

Each ticket opens one session: its ``jti`` is remembered until it expires, at most
``MAX_REMEMBERED`` at once (more live tickets than that are refused as "try again", never
forgotten early, which would let one be replayed).  That memory is the process's own, so a
ticket is also bound to one bridge and one run of it, rather than the memory shared: a bridge
with a ``name`` (the bridge role sets its inventory name) takes only tickets whose ``bridge``
claim names it (the site's route names the bridge it hands browsers), and a bridge refuses
tickets issued before it started (``since``).  A ticket used at one bridge is so refused at
another that shares its keys, and after a restart, within its life.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict

ALGORITHM = "HS256"
MIN_KEY_CHARS = 32  # HS256 keys shorter than its 256-bit hash are guessable offline (RFC 7518 3.2)
MAX_REMEMBERED = 100_000  # used, unexpired tickets; about 100 bytes each
LEEWAY_S = 5  # clocks of the minting server and the bridge may differ this much


class Refusal(Exception):
    """Why a ticket opens nothing: an HTTP status for other clients, a close code for browsers
    (which see only 1006 when an upgrade is refused), and the reason, which says nothing of the keys."""

    def __init__(self, status: int, code: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.code, self.reason = status, code, reason


def unauthorized(reason: str) -> Refusal:
    return Refusal(401, 4401, reason)


def forbidden(reason: str) -> Refusal:
    return Refusal(403, 4403, reason)


class Tickets:
    def __init__(self, keys: tuple[str, ...], ttl_s: float, bridge: str = "", since: float | None = None) -> None:
        """`bridge`: this bridge's name, which its tickets must carry ("": any); `since`: when this
        bridge started: a ticket issued before may have been used before (None: no such rule)."""
        import jwt  # PyJWT: the bridge's venv has it (bridge_packages)

        self.jwt, self.keys, self.ttl_s, self.bridge = jwt, keys, ttl_s, bridge
        self.since = None if since is None else int(since)  # iat is in whole seconds
        self.used: OrderedDict[str, float] = OrderedDict()  # jti -> exp, in the order redeemed

    def mint(self, origin: str, persona: str | None = None, now: float | None = None) -> str:
        """A ticket for one session from a page at `origin`, at this bridge, valid for ttl_s."""
        issued = int(time.time() if now is None else now)
        claims = {"aud": origin, "iat": issued, "exp": issued + int(self.ttl_s), "jti": secrets.token_urlsafe(16)}
        if self.bridge:
            claims["bridge"] = self.bridge
        if persona:
            claims["persona"] = persona
        return self.jwt.encode(claims, self.keys[0], algorithm=ALGORITHM)

    def redeem(self, ticket: str, origin: str | None, persona: str | None) -> dict:
        """The ticket's claims, and it is used up; or Refusal with the reason."""
        jwt = self.jwt
        claims = None
        for key in self.keys:
            try:
                claims = jwt.decode(
                    ticket,
                    key,
                    algorithms=[ALGORITHM],
                    options={"require": ["exp", "iat", "jti", "aud"], "verify_aud": False},
                    leeway=LEEWAY_S,
                )
                break
            except jwt.InvalidSignatureError:
                continue  # another key may have signed it (a rotation)
            except jwt.ExpiredSignatureError:
                raise unauthorized("ticket expired: mint a new one for each session") from None
            except jwt.MissingRequiredClaimError as exc:
                raise unauthorized(f"ticket lacks the {exc.claim} claim") from None
            except jwt.InvalidAlgorithmError:
                raise unauthorized(f"ticket is not signed with {ALGORITHM}") from None
            except jwt.InvalidTokenError:  # not a JWT at all, a bad iat, ...
                raise unauthorized("ticket is malformed") from None
        if claims is None:
            raise unauthorized("ticket signature does not verify (not minted with this bridge's keys)")
        # Signed is not well-formed: a claim of the wrong type is refused here, never a TypeError later.
        numbers = all(type(claims.get(k)) in (int, float) for k in ("exp", "iat"))
        texts = all(isinstance(claims.get(k), str) for k in ("jti", "aud"))
        optional_texts = all(isinstance(claims.get(k, ""), str) for k in ("persona", "bridge"))
        if not numbers or not texts or not optional_texts:
            raise unauthorized("ticket is malformed (a claim of the wrong type)")
        if claims["exp"] - claims["iat"] > self.ttl_s + LEEWAY_S:
            raise unauthorized(
                f"ticket lives {claims['exp'] - claims['iat']} s, longer than the bridge's {self.ttl_s:g} s"
            )
        if claims["aud"] != origin:
            raise forbidden(f"ticket was minted for {claims['aud']}, not {origin or 'a client without an Origin'}")
        if self.bridge and claims.get("bridge") != self.bridge:
            named = claims.get("bridge")
            raise forbidden(
                f"ticket is for bridge {named}, not this one ({self.bridge})"
                if named
                else f"ticket names no bridge; this one ({self.bridge}) takes only its own: mint it with the site's "
                "route as deployed with this bridge"
            )
        if self.since is not None and claims["iat"] < self.since:
            raise unauthorized("ticket was issued before this bridge started (it may have been used): mint a new one")
        wanted = claims.get("persona")
        if wanted is not None and persona is not None and persona != wanted:
            raise forbidden(f"ticket is for persona {wanted}, not {persona}")
        self.use(claims["jti"], float(claims["exp"]), time.time())
        return claims

    def use(self, jti: str, expires: float, now: float) -> None:
        """Remember `jti` until `expires`; refused if it was used before."""
        while self.used and next(iter(self.used.values())) + LEEWAY_S < now:
            self.used.popitem(last=False)
        if jti in self.used:
            raise unauthorized("ticket already used: each ticket opens one session")
        if len(self.used) >= MAX_REMEMBERED:
            raise Refusal(503, 1013, "too many live tickets: try again in a minute")
        self.used[jti] = expires
