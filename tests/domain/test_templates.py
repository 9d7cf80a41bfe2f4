"""Error templates: masking rules and their properties."""

from __future__ import annotations

import uuid
from datetime import datetime

from hypothesis import given
from hypothesis import strategies as st

from app.domain.deadletter.templates import error_template, template_hash



def test_error_template_masks_every_kind_of_variable_part():
    message = (
        "job 3f2b8c1e-9d4a-4e7b-8c2d-1a2b3c4d5e6f at 2026-03-04T05:06:07Z fetched https://cdn.example.net/a/b?x=1, "
        "wrote /var/lib/stella/out-17.json for ops@example.com from 10.0.12.7:8443 with key 'alpha', "
        "hash 9f86d081884c7d65 and 0x1F, took 1500ms over 3 tries"
    )
    assert error_template(message) == (
        "job <uuid> at <timestamp> fetched <url>, wrote <path> for <email> from <ip> with key <value>, "
        "hash <hex> and <hex>, took <n>ms over <n> tries"
    )


def test_error_template_keeps_words_and_version_like_identifiers():
    assert error_template("sha256 digest mismatch in v2 manifest") == "sha256 digest mismatch in v2 manifest"
    assert error_template("feedback  was\tdefaced") == "feedback was defaced"


def test_error_template_masks_an_already_sanitised_address():
    assert error_template("mail to ***@*** bounced") == "mail to <email> bounced"


@given(
    st.integers(min_value=0, max_value=10**9),
    st.integers(min_value=0, max_value=10**9),
    st.uuids(),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789 -_", max_size=20),
)
def test_messages_that_differ_only_in_ids_numbers_and_quoted_values_share_a_template(a, b, job, quoted):
    first = f"worker-{a} lost the lease of job {job} after {b} s (reason '{quoted}')"
    second = f"worker-{b} lost the lease of job {uuid.uuid4()} after {a} s (reason 'other')"
    assert error_template(first) == error_template(second) == (
        "worker-<n> lost the lease of job <uuid> after <n> s (reason <value>)"
    )


def test_template_hash_is_short_stable_and_depends_on_the_error_code():
    assert template_hash("db.timeout", "t <n>") == template_hash("db.timeout", "t <n>")
    assert template_hash("db.timeout", "t <n>") != template_hash("db.refused", "t <n>")
    assert len(template_hash("db.timeout", "t <n>")) == 16



FILLERS = {
    "uuid": st.uuids().map(str),
    "number": st.integers(min_value=0, max_value=10**12).map(str),
    "quoted": st.text(alphabet="abcdefghij klmnop-_.0123456789", max_size=30).map(lambda s: f"'{s}'"),
    "ip": st.tuples(*[st.integers(0, 255)] * 4).map(lambda p: ".".join(map(str, p))),
    "email": st.from_regex(r"[a-z]{1,8}@[a-z]{1,8}\.(com|org|net)", fullmatch=True),
    "url": st.from_regex(r"https://[a-z]{1,8}\.example\.com/[a-z0-9]{1,8}", fullmatch=True),
    "path": st.from_regex(r"/var/[a-z]{1,8}/[a-z0-9]{1,8}\.log", fullmatch=True),
    "timestamp": st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1)).map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%SZ")),
    "hex": st.binary(min_size=8, max_size=16).map(lambda b: "a1" + b.hex()),
}


@given(st.data())
def test_messages_differing_only_in_any_masked_part_share_one_template(data):
    kinds = data.draw(st.lists(st.sampled_from(sorted(FILLERS)), min_size=1, max_size=5))
    skeleton = [f"step {i} failed with" for i in range(len(kinds))]

    def render() -> str:
        return " ".join(f"{words} {data.draw(FILLERS[kind])};" for words, kind in zip(skeleton, kinds))

    assert error_template(render()) == error_template(render())


@given(st.text(max_size=300))
def test_templating_is_idempotent(message):
    once = error_template(message)
    assert error_template(once) == once


@given(
    st.from_regex(r"[a-z]{1,10}@[a-z]{1,10}\.com", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9]{12,40}", fullmatch=True),
)
def test_no_secret_survives_templating(address, secret):
    message = (
        f"login of {address} failed with Bearer {secret} against postgresql://svc:{secret}@db:5432/app "
        f"and password={secret}"
    )
    template = error_template(message)
    assert address not in template
    assert secret not in template
