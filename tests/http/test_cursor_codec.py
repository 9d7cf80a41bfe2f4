"""Continuation tokens: opaque, signed, bound to their scope, rotation-capable, and stale after a day."""

from __future__ import annotations

import string
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from app.core.cursors import TOKEN_MAX_AGE, CursorCodec, PageScope
from app.core.problems import Problem

NEW = ("new", b"n" * 32)
OLD = ("old", b"o" * 32)
SCOPE = PageScope(
    "acme", None, "sources", (("sourceType", None), ("enabled", None)), "name asc,source_id asc"
)
TOKEN_ALPHABET = string.ascii_letters + string.digits + "-_."

key_values = st.one_of(
    st.text(max_size=40),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
    st.none(),
)
keys = st.lists(key_values, min_size=1, max_size=4)
short_text = st.text(alphabet=string.ascii_letters + string.digits + "._-", min_size=1, max_size=12)
scopes = st.builds(
    PageScope,
    tenant=short_text,
    project=st.none() | short_text,
    endpoint=st.sampled_from(["sources", "quotas", "deadletter", "audit"]),
    filters=st.lists(st.tuples(short_text, st.none() | st.booleans() | short_text), max_size=3).map(tuple),
    sort=st.sampled_from(["name asc,source_id asc", "job_type asc,quota_id asc", "created_at desc,id desc"]),
)
fast = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def rejected(codec: CursorCodec, token: str, scope: PageScope) -> bool:
    with pytest.raises(Problem) as caught:
        codec.decode(token, scope)
    assert caught.value.status == 400
    assert caught.value.code == "invalid_continuation_token"
    return True


@fast
@given(last_key=keys, scope=scopes)
def test_encoded_key_decodes_to_the_same_key(last_key: list[Any], scope: PageScope) -> None:
    codec = CursorCodec([NEW])
    assert codec.decode(codec.encode(last_key, scope), scope) == last_key


@fast
@given(last_key=keys, data=st.data())
def test_any_single_character_change_is_rejected(last_key: list[Any], data: st.DataObject) -> None:
    codec = CursorCodec([NEW])
    token = codec.encode(last_key, SCOPE)
    # The last character of each base64url segment also carries padding bits: draw it often.
    segment_ends = [i - 1 for i, ch in enumerate(token) if ch == "."] + [len(token) - 1]
    index = data.draw(
        st.sampled_from(segment_ends) | st.integers(min_value=0, max_value=len(token) - 1), label="index"
    )
    replacement = data.draw(st.sampled_from(TOKEN_ALPHABET + "=+/ "), label="replacement")
    assume(replacement != token[index])
    assert rejected(codec, token[:index] + replacement + token[index + 1 :], SCOPE)


def test_every_position_of_a_token_is_covered_by_the_signature() -> None:
    codec = CursorCodec([NEW])
    token = codec.encode(["same name", "src-0001"], SCOPE)
    for index, original in enumerate(token):
        for replacement in TOKEN_ALPHABET:
            if replacement != original:
                assert rejected(codec, token[:index] + replacement + token[index + 1 :], SCOPE)


@fast
@given(last_key=keys, scope=scopes, other=scopes)
def test_token_is_rejected_under_any_other_scope(
    last_key: list[Any], scope: PageScope, other: PageScope
) -> None:
    assume(other != scope)
    codec = CursorCodec([NEW])
    assert rejected(codec, codec.encode(last_key, scope), other)


@pytest.mark.parametrize(
    "other",
    [
        PageScope("globex", None, SCOPE.endpoint, SCOPE.filters, SCOPE.sort),
        PageScope(SCOPE.tenant, "billing", SCOPE.endpoint, SCOPE.filters, SCOPE.sort),
        PageScope(SCOPE.tenant, None, "quotas", SCOPE.filters, SCOPE.sort),
        PageScope(
            SCOPE.tenant, None, SCOPE.endpoint, (("sourceType", "scanner"), ("enabled", None)), SCOPE.sort
        ),
        PageScope(SCOPE.tenant, None, SCOPE.endpoint, (("sourceType", None), ("enabled", True)), SCOPE.sort),
        PageScope(SCOPE.tenant, None, SCOPE.endpoint, SCOPE.filters, "name desc,source_id desc"),
    ],
    ids=["tenant", "project", "endpoint", "sourceType", "enabled", "sort"],
)
def test_token_bound_to_one_scope_is_rejected_elsewhere(other: PageScope) -> None:
    codec = CursorCodec([NEW])
    token = codec.encode(["a", "b"], SCOPE)
    assert codec.decode(token, SCOPE) == ["a", "b"]
    assert rejected(codec, token, other)


@fast
@given(last_key=keys, scope=scopes)
def test_token_of_old_secret_verifies_while_it_is_listed_after_the_new_one(
    last_key: list[Any], scope: PageScope
) -> None:
    token = CursorCodec([OLD]).encode(last_key, scope)
    assert CursorCodec([NEW, OLD]).decode(token, scope) == last_key
    assert rejected(CursorCodec([NEW]), token, scope)


def test_rotated_codec_signs_with_the_first_secret() -> None:
    rotated = CursorCodec([NEW, OLD])
    token = rotated.encode(["x"], SCOPE)
    assert CursorCodec([NEW]).decode(token, SCOPE) == ["x"]
    assert rejected(CursorCodec([OLD]), token, SCOPE)


def test_same_kid_with_another_secret_is_rejected() -> None:
    token = CursorCodec([("k", b"a" * 32)]).encode(["x"], SCOPE)
    assert rejected(CursorCodec([("k", b"b" * 32)]), token, SCOPE)


def test_duplicate_kids_are_refused() -> None:
    with pytest.raises(ValueError):
        CursorCodec([("k", b"a" * 32), ("k", b"b" * 32)])


def test_codec_needs_a_secret() -> None:
    with pytest.raises(ValueError):
        CursorCodec([])


def test_token_is_stale_after_the_maximum_age() -> None:
    clock = Clock()
    codec = CursorCodec([NEW], clock=clock)
    token = codec.encode(["a", "b"], SCOPE)
    clock.now += TOKEN_MAX_AGE
    assert codec.decode(token, SCOPE) == ["a", "b"]
    clock.now += 1
    assert rejected(codec, token, SCOPE)


def test_token_from_a_clock_slightly_ahead_is_accepted_but_not_from_far_in_the_future() -> None:
    clock = Clock()
    codec = CursorCodec([NEW], clock=clock)
    token = codec.encode(["a"], SCOPE)
    clock.now -= 60
    assert codec.decode(token, SCOPE) == ["a"]
    clock.now -= 3600
    assert rejected(codec, token, SCOPE)


def test_token_does_not_reveal_its_scope() -> None:
    scope = PageScope(
        "tenant-secret-name", "project-secret-name", "sources", (("sourceType", "kind-x"),), "name asc"
    )
    token = CursorCodec([NEW]).encode(["a"], scope)
    for word in ("tenant-secret-name", "project-secret-name", "kind-x", "sources"):
        assert word not in token


@pytest.mark.parametrize(
    "token",
    [
        "",
        ".",
        "..",
        "new..",
        "a.b.c.d",
        "new.!!!.!!!",
        "x" * 2000,
        "new.e30.AAAAAAAAAAAAAAAAAAAAAA",
        "\u00e9.\u00e9.\u00e9",
    ],
    ids=[
        "empty",
        "dot",
        "two-dots",
        "empty-parts",
        "four-parts",
        "bad-base64",
        "long",
        "unsigned",
        "non-ascii",
    ],
)
def test_malformed_tokens_are_rejected(token: str) -> None:
    assert rejected(CursorCodec([NEW]), token, SCOPE)


@pytest.mark.parametrize(
    "body",
    [b"[]", b"{}", b"[1]", b"[2, 1800000000, []]", b'[1, "now", ["a"]]', b"[1, 1800000000, {}]", b"not json"],
)
def test_signed_but_malformed_bodies_are_rejected(body: bytes) -> None:
    """A body that the signature covers but the codec did not write (e.g. from a future version)."""
    import base64
    import hashlib
    import hmac

    encoded = base64.urlsafe_b64encode(body).rstrip(b"=").decode()
    mac = hmac.new(NEW[1], body + b"\x00" + SCOPE.binding(), hashlib.sha256).digest()[:16]
    token = f"new.{encoded}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    assert rejected(CursorCodec([NEW], clock=Clock()), token, SCOPE)
