"""Standard Webhooks verification (reliability.md §5.6, recipe E)."""

import base64
import hashlib
import hmac
import json

import pytest

from hub.errors import InputError
from hub.sources.http import _decode_secret, sign_webhook, verify_webhook

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
OLD = "whsec_" + base64.b64encode(b"old-secret-old-secret-old-secret").decode()
NOW = 1_795_000_000
BODY = json.dumps({"eventId": "e1", "type": "device.test"}).encode()


def headers(body=BODY, secret=SECRET, msg_id="msg_1", ts=NOW):
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts),
            "webhook-signature": sign_webhook(secret, msg_id, ts, body)}


def check(h, body=BODY, secrets=(SECRET,)):
    return verify_webhook([_decode_secret(s) for s in secrets], h, body, 300, now=NOW)


def test_valid_signature_returns_webhook_id():
    assert check(headers()) == "msg_1"


def test_signature_matches_an_independent_computation():
    signed = b"msg_1." + str(NOW).encode() + b"." + BODY
    mac = hmac.new(b"0123456789abcdef0123456789abcdef", signed, hashlib.sha256).digest()
    assert headers()["webhook-signature"] == "v1," + base64.b64encode(mac).decode()


@pytest.mark.parametrize(("mutate", "slug", "status"), [
    (lambda h, b: ({k: v for k, v in h.items() if k != "webhook-signature"}, b),
     "missing-signature", 401),
    (lambda h, b: (headers(secret="whsec_" + base64.b64encode(b"x" * 32).decode()), b),
     "bad-signature", 401),
    (lambda h, b: (h, b.replace(b"e1", b"e2")), "bad-signature", 401),  # body altered
    (lambda h, b: (headers(ts=NOW - 360), b), "stale-signature", 401),
    (lambda h, b: (headers(ts=NOW + 360), b), "stale-signature", 401),
    (lambda h, b: (headers(msg_id="a.b"), b), "bad-webhook-id", 400),
    (lambda h, b: ({**h, "webhook-timestamp": "soon"}, b), "bad-signature", 401),
    # the signature covers the bytes: re-serialising the same JSON breaks it
    (lambda h, b: (h, json.dumps(json.loads(b), sort_keys=True, indent=1).encode()),
     "bad-signature", 401),
])
def test_rejections(mutate, slug, status):
    h, body = mutate(headers(), BODY)
    with pytest.raises(InputError) as info:
        check(h, body)
    assert (info.value.slug, info.value.status) == (slug, status)


def test_key_rotation_accepts_old_and_new_during_overlap():
    assert check(headers(secret=OLD), secrets=(SECRET, OLD)) == "msg_1"
    with pytest.raises(InputError):
        check(headers(secret=OLD), secrets=(SECRET,))


def test_several_signatures_in_one_header():
    h = headers()
    h["webhook-signature"] = "v1,bm9wZQ== " + h["webhook-signature"]
    assert check(h) == "msg_1"
