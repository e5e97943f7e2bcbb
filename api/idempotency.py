"""``Idempotency-Key`` for ``POST /timers``.

Per the IETF draft "The Idempotency-Key HTTP Header Field"
(draft-ietf-httpapi-idempotency-key-header): a repeated request with the same
key and the same body within 24 h gets the original response; the same key
with another body gets ``422``; the same key while the first request is still
being processed gets ``409``. Keys live in Redis (on the control connection)
and expire: 24 h after the response, or 60 s after a request that never
finished (the client may then retry).
"""

import hashlib
import json

import falcon

from api.validation import FieldError
from sharding import scripts

RESPONSE_TTL_S = 24 * 3600
PENDING_TTL_S = 60
MAX_KEY_LENGTH = 255

def fingerprint(body):
    """SHA-256 of the canonical JSON of a decoded request body (key order ignored)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_key(key):
    """Validate an ``Idempotency-Key`` value (1-255 visible ASCII characters).

    Raises:
        FieldError: on ``Idempotency-Key``.
    """
    if not key or len(key) > MAX_KEY_LENGTH or not all(0x21 <= ord(c) <= 0x7E for c in key.strip('"')):
        raise FieldError("Idempotency-Key", f"must be 1 to {MAX_KEY_LENGTH} visible ASCII characters")
    return key


class IdempotencyKeys:
    """Stored responses by idempotency key.

    Args:
        client: redis-py client (the store's control connection).
    """

    def __init__(self, client):
        self.client = client
        self._begin, self._abandon = scripts.register(client, "idempotency_begin", "idempotency_abandon")

    @staticmethod
    def _redis_key(scope, key):
        return "idem:" + hashlib.sha256(f"{scope}\0{key}".encode()).hexdigest()

    def begin(self, scope, key, body_fingerprint):
        """Start a request under ``key``.

        Args:
            scope: who the key belongs to (keys of different clients never clash).
        Returns:
            None when this request is the first (the caller must then call
            :meth:`complete` or :meth:`abandon`), else the stored response dict
            ``{"status", "location", "body"}``.
        Raises:
            falcon.HTTPConflict: the first request with this key is in flight.
            falcon.HTTPUnprocessableEntity: the key was used with another body.
        """
        res = self._begin(keys=[self._redis_key(scope, key)], args=[body_fingerprint, PENDING_TTL_S])
        state = res[0].decode()
        if state == "new":
            return None
        if state == "pending":
            raise falcon.HTTPConflict(
                title="Request in progress",
                description="a request with this Idempotency-Key is still being processed")
        if state == "mismatch":
            raise falcon.HTTPUnprocessableEntity(
                title="Idempotency-Key reused",
                description="this Idempotency-Key was used with a different request body")
        return json.loads(res[1])

    def complete(self, scope, key, response):
        """Store the response of the first request for 24 h."""
        redis_key = self._redis_key(scope, key)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(redis_key, "response", json.dumps(response))
        pipe.expire(redis_key, RESPONSE_TTL_S)
        pipe.execute()

    def abandon(self, scope, key, body_fingerprint):
        """Forget a key whose first request failed, so that a retry may run."""
        self._abandon(keys=[self._redis_key(scope, key)], args=[body_fingerprint])
