"""Bearer tokens for the timer API (``TIMER_API_TOKENS``).

With tokens configured, ``/timers*`` and ``/shards`` require
``Authorization: Bearer <token>`` (RFC 6750); a missing or unknown token gets
``401`` with ``WWW-Authenticate: Bearer``. Health, readiness, metrics and the
API documentation stay open. Tokens are compared in constant time
(``hmac.compare_digest``) against every configured token.
"""

import hashlib
import hmac

import falcon

PROTECTED_PREFIXES = ("/timers", "/shards")


def client_scope(token):
    """A short, stable name for the client holding ``token`` (never the token itself)."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def matches_any(given, tokens):
    """True when ``given`` (bytes) equals one of ``tokens`` (bytes).

    Compared with every token, without stopping early (``hmac.compare_digest``),
    so timing tells nothing about which token or how much of it matched.
    """
    matches = [hmac.compare_digest(given, t) for t in tokens]
    return bool(given) and any(matches)


class BearerAuth:
    """Falcon middleware enforcing bearer tokens.

    Args:
        tokens: the accepted tokens (non-empty strings).
    Sets ``req.context.client`` to :func:`client_scope` of the token, which
    scopes idempotency keys per client.
    """

    def __init__(self, tokens):
        self.tokens = [t.encode() for t in tokens]

    def process_request(self, req, resp):
        """Reject a protected request without a valid token.

        Raises:
            falcon.HTTPUnauthorized: with ``WWW-Authenticate: Bearer``.
        """
        if not req.path.startswith(PROTECTED_PREFIXES):
            return
        scheme, _, token = (req.get_header("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not matches_any(token.strip().encode(), self.tokens):
            raise falcon.HTTPUnauthorized(
                title="Unauthorized", description="a valid bearer token is required",
                challenges=["Bearer"])
        req.context.client = client_scope(token.strip())
