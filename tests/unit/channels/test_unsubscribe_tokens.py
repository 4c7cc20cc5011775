"""Unsubscribe tokens: signed, expiring, no personal data; forged or expired ones are rejected."""

from __future__ import annotations

import base64
import json

import pytest
from pqlflow.channels.email.unsubscribe import ExpiredToken, InvalidToken, issue, secret_from_string, verify
from pqlflow.nurture.suppression import address_hash

SECRET = b"x" * 48
OTHER = b"y" * 48
NOW = 1_800_000_000.0
HASH = address_hash("ana@example.com")


def token(**kw):
    args = {
        "address_hash": HASH,
        "account_id": "acc_1",
        "user_id": "u_1",
        "ttl_seconds": 3600,
        "now": NOW,
    } | kw
    return issue(SECRET, **args)


def payload(tok: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(tok.split(".")[1] + "=="))


def test_a_valid_token_names_the_subscriber():
    # Given a token issued now, valid for an hour
    tok = token()
    # When it is verified within the hour
    who = verify([SECRET], tok, now=NOW + 3599)
    # Then it names the address hash, account and user
    assert (who.address_hash, who.account_id, who.user_id) == (HASH, "acc_1", "u_1")


def test_an_expired_token_is_rejected():
    with pytest.raises(ExpiredToken):
        verify([SECRET], token(), now=NOW + 3601)


def test_a_token_signed_with_another_secret_is_rejected():
    forged = issue(OTHER, address_hash=HASH, account_id="acc_1", user_id="u_1", now=NOW)
    with pytest.raises(InvalidToken) as err:
        verify([SECRET], forged, now=NOW)
    assert not isinstance(err.value, ExpiredToken)


def test_a_token_with_a_changed_payload_is_rejected():
    # Given someone swaps in another address hash and a later expiry, keeping the signature
    version, _, signature = token().split(".")
    body = (
        base64.urlsafe_b64encode(
            json.dumps({"h": address_hash("victim@example.com"), "x": int(NOW) + 10**9}).encode()
        )
        .rstrip(b"=")
        .decode()
    )
    # When verified, Then it is rejected
    with pytest.raises(InvalidToken):
        verify([SECRET], f"{version}.{body}.{signature}", now=NOW)


@pytest.mark.parametrize("bad", ["", "v1", "v1.abc", "v2.a.b", "v1.a.b.c", "v1.!!!.???", "x" * 5000])
def test_malformed_tokens_are_rejected(bad):
    with pytest.raises(InvalidToken):
        verify([SECRET], bad, now=NOW)


def test_the_previous_secret_still_verifies_after_a_rotation():
    old = issue(OTHER, address_hash=HASH, account_id="acc_1", user_id="u_1", now=NOW)
    assert verify([SECRET, OTHER], old, now=NOW).address_hash == HASH


def test_the_token_holds_no_readable_personal_data():
    # Given a user whose id is their email address
    tok = token(user_id="ana@example.com")
    # Then the readable payload has the address only as a hash, and drops the email-like user id
    data = payload(tok)
    assert data == {"h": HASH, "a": "acc_1", "x": int(NOW) + 3600}
    assert "ana" not in tok


def test_secrets_come_as_a_plain_string_or_json():
    assert secret_from_string("z" * 40) == b"z" * 40
    assert secret_from_string(json.dumps({"secret": "w" * 40})) == b"w" * 40
    with pytest.raises(ValueError, match="at least 32"):
        secret_from_string("short")
    with pytest.raises(ValueError, match="'secret'"):
        secret_from_string(json.dumps({"key": "w" * 40}))


# Anything a link can carry after `token=`: non-ASCII letters, lone surrogates, NUL and control characters,
# padding and separators in the wrong place, and each of them in the version, payload or signature part.
_VALID = token()
_V, _P, _S = _VALID.split(".")
HOSTILE_TOKENS = [
    f"{_V}.{_P}.{_S[:-1]}é",  # the issue's case: "é" in the signature (TypeError in compare_digest)
    f"{_V}.{_P}é.{_S}",  # "é" in the signed part (UnicodeEncodeError when signing)
    f"vé.{_P}.{_S}",
    f"{_V}.{_P}.é",
    "v1.é.é",
    f"{_V}.{_P}.{_S}\u0301",  # a combining accent after a valid signature
    f"{_V}.{_P}\ud800.{_S}",  # a lone surrogate (JSON "\ud800" in the event)
    f"{_V}.{_P}.\udfff",
    f"{_V}.{_P}\x00.{_S}",
    f"{_V}.{_P}.{_S}\x00",
    f"{_V}.{_P}\n.{_S}",  # (surrounding whitespace is trimmed, as a copied link may carry it)
    f"{_V}.\x1b[31m.{_S}",
    f"{_V}.{_P}==.{_S}",  # base64 padding (tokens never carry it)
    f"{_V}.{_P}.{_S}=",
    f"{_V}.{_P}+/.{_S}",  # standard-alphabet base64
    f"{_V}..{_S}",
    f"{_V}.{_P}.",
    f" {_V}.{_P}.{_S[:-2]} ",
    f"{_V}.{_P}.{_S}.{_S}",
    f"{_V}.{_P}%2E{_S}",
    "v1.\uff41\uff42\uff43.\uff44",  # full-width letters
    "v1." + "é" * 1200 + ".x",  # long and non-ASCII: longer than 2,048 bytes, not characters
    f"{_V}.{_P}.{'A' * 43}",  # well-formed, wrong signature
    "v1." + base64.urlsafe_b64encode(b"\xff\xfe").rstrip(b"=").decode() + ".AAAA",
]


@pytest.mark.parametrize("bad", HOSTILE_TOKENS, ids=range(len(HOSTILE_TOKENS)))
def test_a_token_with_any_character_outside_its_alphabet_is_invalid_not_an_error(bad):
    # Given a token that was altered in transit or by hand (non-ASCII, control characters, surrogates)
    # When it is verified
    # Then it is rejected as invalid, like a forged one, and never raises anything else
    with pytest.raises(InvalidToken) as err:
        verify([SECRET], bad, now=NOW)
    assert not isinstance(err.value, ExpiredToken)
