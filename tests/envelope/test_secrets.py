"""No token, password or e-mail address in logs, response bodies or audit rows."""

from __future__ import annotations

import io
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import app.http.mutation as mutation_module
from app.sanitize import _PATTERNS, SanitizingFilter, needs_masking, sanitize
from app.storage.models import AuditRecord
from tests.conftest import make_app, serving
from tests.envelope import audit_rows

SOURCES = "/jobengine/sources"
PASSWORD = "hunter2"
DSN = f"postgresql://u:{PASSWORD}@db/x"
EMAIL = "alice@example.com"
SECRETS = (PASSWORD, EMAIL)


# --- sanitize(), pattern by pattern -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "secret", "kept"),
    [
        (f"connect to {DSN} failed", PASSWORD, "postgresql://u:***@db/x"),
        ("redis://:s3cret-pw@cache:6379/0 refused", "s3cret-pw", "redis://:***@cache:6379/0"),
        ("amqp://svc:p@ss/w0rd@mq:5672/vhost", "w0rd", "amqp://svc:***@mq:5672/vhost"),
        (
            "fetch https://bot:tok3n@git.example.org/repo.git",
            "tok3n",
            "https://bot:***@git.example.org/repo.git",
        ),
        ("Authorization: Bearer abc.def-ghi_jkl123", "abc.def-ghi_jkl123", "Bearer ***"),
        ("DPoP Zm9vYmFyYmF6cXV4", "Zm9vYmFyYmF6cXV4", "DPoP ***"),
        ("basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA==", "basic ***"),
        ("token eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl here", "eyJzdWIiOiJ4In0", "***jwt***"),
        ("password=hunter2 user=u", PASSWORD, "password=***"),
        ("api_key: k-123456 and secret=abc", "k-123456", "api_key: ***"),
        ('{"password": "hunter2", "user": "u"}', PASSWORD, '"password": "***'),
        ("callback?access_token=tok-987&x=1", "tok-987", "access_token=***"),
        (f"mail {EMAIL} now", EMAIL, "***@***"),
        ("first.last+tag@sub.example.co.uk wrote", "first.last+tag@sub.example.co.uk", "***@***"),
        (
            "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEG\n-----END PRIVATE KEY-----",
            "MIGHAgEAMBMGByqGSM49AgEG",
            "***private key***",
        ),
        (
            (
                "(IntegrityError) duplicate key\n[SQL: INSERT INTO audit_log (reason) VALUES ($1)]\n"
                "[parameters: ('hunter2',)]\n(Background on this error at: https://sqlalche.me/e/20/gkpj)"
            ),
            "INSERT INTO",
            "(SQL omitted)",
        ),
        ("[parameters: ('hunter2', 3)]", PASSWORD, "(parameters omitted)"),
    ],
)
def test_sanitize_masks_each_kind_of_secret(text, secret, kept):
    clean = sanitize(text)
    assert secret not in clean
    assert kept in clean


def test_sanitize_masks_a_password_and_an_address_in_one_line():
    clean = sanitize(f'{{"dsn":"{DSN}","contact":"{EMAIL}"}}')
    assert PASSWORD not in clean and EMAIL not in clean


def test_sanitize_leaves_ordinary_text_alone():
    text = "source scanner-1 failed after 3 attempts at https://feeds.example.org/v1/items?page=2"
    assert sanitize(text) == text


def test_sanitizing_filter_masks_arguments_and_drops_tracebacks():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(SanitizingFilter())
    logger = logging.getLogger("jobgate.test.sanitize")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise RuntimeError(f"could not reach {DSN}")
        except RuntimeError:
            logger.exception("failure for %s", EMAIL)
        logger.warning("stack", stack_info=True)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    written = stream.getvalue()
    assert "RuntimeError" in written and "***@***" in written
    assert PASSWORD not in written and EMAIL not in written
    assert "Traceback" not in written and 'File "' not in written


# --- end to end: logs, bodies and audit rows ----------------------------------------------------------


@pytest.fixture
def logs(caplog):  # type: ignore[no-untyped-def]
    """Every record that reaches the root logger at INFO or above, as a handler without filters writes it.

    Stricter than the app's own handler: the messages must already be clean where they are logged.
    """
    caplog.set_level(logging.INFO)
    return caplog


def _is_pytest_handler(handler: logging.Handler) -> bool:
    return type(handler).__module__.startswith("_pytest")


def test_every_log_handler_of_the_app_sanitises(app):
    handlers = [h for h in logging.getLogger().handlers if not _is_pytest_handler(h)]
    assert handlers
    unfiltered = [h for h in handlers if not any(isinstance(f, SanitizingFilter) for f in h.filters)]
    assert unfiltered == []


def _assert_clean(*texts: str, secrets: tuple[str, ...] = SECRETS) -> None:
    for text in texts:
        for secret in secrets:
            assert secret not in text, f"{secret!r} leaked into: {text[:500]}"


async def test_bad_token_appears_in_no_log_and_no_body(client, factory, keys, logs):
    tenant = await factory.tenant()
    token = keys.token(key=keys.outsider, tenant=tenant, scope="orch:read", email=EMAIL)
    signature = token.rsplit(".", 1)[1]
    responses = [
        await client.get(SOURCES, headers={"Authorization": f"Bearer {token}", "X-Stella-Tenant": tenant}),
        await client.get(SOURCES, headers={"Authorization": f"Bearer {token}x.y", "X-Stella-Tenant": tenant}),
        await client.get(
            SOURCES, headers={"Authorization": f"DPoP {token}", "DPoP": token, "X-Stella-Tenant": tenant}
        ),
    ]
    assert [r.status_code for r in responses] == [401, 401, 401]
    texts = [r.text + str(r.headers) for r in responses]
    _assert_clean(*texts, logs.text, secrets=(token, signature, EMAIL))


async def test_validation_error_about_a_value_with_a_dsn_and_an_address_leaks_neither(
    client, factory, runtime, logs
):
    tenant = await factory.tenant()
    headers = factory.headers(tenant, reason=f"import from {DSN} for {EMAIL}", ticket=f"mail {EMAIL}")
    bodies = [
        {"name": "feed", "sourceType": "scanner", DSN: 1, EMAIL: 2},  # unknown fields named after the secrets
        {"name": "feed", "sourceType": "scanner", "description": f"{DSN} {EMAIL} " + "x" * 2000},  # too long
        {"name": "feed", "sourceType": DSN, "sourceId": EMAIL},  # values matching no pattern
    ]
    responses = [await client.post(SOURCES, json=body, headers=headers) for body in bodies]
    responses.append(await client.get(f"{SOURCES}/{EMAIL}", headers=headers))
    responses.append(await client.get(SOURCES, params={"enabled": f"{DSN} {EMAIL}"}, headers=headers))
    responses.append(await client.put(f"{SOURCES}/{EMAIL}", json={"name": "x"}, headers=headers))
    assert [r.status_code for r in responses] == [400, 400, 400, 404, 400, 400]
    rows = await audit_rows(runtime, tenant)
    assert len(rows) == 4  # the three POSTs and the PUT
    stored = [" ".join(str(getattr(row, c.key)) for c in row.__table__.columns) for row in rows]
    _assert_clean(*(r.text for r in responses), *stored, logs.text)


async def test_reason_and_ticket_with_secrets_are_masked_in_the_audit_row(client, factory, runtime):
    tenant = await factory.tenant()
    headers = factory.headers(tenant, reason=f"moved off {DSN}, asked by {EMAIL}", ticket=f"OPS-9 {EMAIL}")
    response = await client.post(SOURCES, json={"name": "feed", "sourceType": "scanner"}, headers=headers)
    assert response.status_code == 201
    (row,) = await audit_rows(runtime, tenant)
    assert row.reason == "moved off postgresql://u:***@db/x, asked by ***@***"
    assert row.ticket == "OPS-9 ***@***"


@pytest.mark.parametrize("violation", ["foreign-key", "too-long"])
async def test_database_error_quoting_secrets_is_logged_without_them_and_without_sql(
    client, factory, runtime, monkeypatch, logs, violation
):
    tenant = await factory.tenant()

    async def failing_write(session, values):  # type: ignore[no-untyped-def]
        row = AuditRecord(**values)
        row.reason = f"moved off {DSN} for {EMAIL}"  # quoted among the parameters of the failing INSERT
        if violation == "foreign-key":
            row.tenant_id = -1
        else:
            row.route = f"/{DSN}/{EMAIL}/" + "x" * 300  # too long for its column
        session.add(row)

    monkeypatch.setattr(mutation_module, "write_audit", failing_write)
    response = await client.post(
        SOURCES, json={"name": "feed", "sourceType": "scanner"}, headers=factory.headers(tenant)
    )
    monkeypatch.undo()
    assert response.status_code in (409, 503)  # a conflict at commit, or the commit failed
    assert response.headers["content-type"].startswith("application/problem+json")
    assert [r for r in logs.records if r.levelno >= logging.WARNING], "the failure was not logged"
    _assert_clean(
        response.text, logs.text, secrets=(*SECRETS, "INSERT INTO", "[SQL:", "[parameters:", "Traceback")
    )


async def test_unreachable_database_with_a_password_in_its_url_leaks_it_nowhere(gateway_env, factory, logs):
    tenant = await factory.tenant()
    broken = make_app(gateway_env, JOBGATE_DATABASE_URL=f"postgresql+asyncpg://u:{PASSWORD}@127.0.0.1:1/x")
    async with serving(broken) as down:
        responses = [
            await down.get(SOURCES, headers=factory.headers(tenant)),
            await down.post(
                SOURCES, json={"name": "feed", "sourceType": "scanner"}, headers=factory.headers(tenant)
            ),
            await down.get("/readyz"),
        ]
    assert [r.status_code for r in responses] == [503, 503, 503]
    assert all(r.headers["content-type"].startswith("application/problem+json") for r in responses)
    _assert_clean(*(r.text for r in responses), logs.text)


# --- the word pre-check changes nothing ------------------------------------------------------------

_FRAGMENTS = (
    "Bearer ", "bEaReR ", "DPOP ", "basic ", "eyJhbGciOiJFUzI1NiJ9", ".", "-", "_", "=", ": ", "://", "@", "/",
    "password", "PassWord", "paſſword", "passwd", "PWD", "secret", "ApI_kEy", "api-key", "access_token",
    "refresh-token", "token", "[SQL: ", "[parameters: ", "-----BEGIN ", "PRIVATE KEY-----", "-----END ",
    "example.com", "user", "Kelvin K", "İ", "ß", " ", "\n", '"', "'", "abc123XYZ", "Zm9vYmFyYmF6cXV4",
    "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln", "pwd=", "PASSWD: ", "secret=", "Token=", "api_key=", '"password": "', "redis://:", "https://u:", "@host",
)


def sanitize_everywhere(text: str) -> str:
    """:func:`sanitize` without the word pre-check (every pattern on every text): its reference."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


@given(st.lists(st.one_of(st.sampled_from(_FRAGMENTS), st.text(max_size=6)), max_size=14).map("".join))
@settings(max_examples=1500, deadline=None)
def test_sanitize_with_its_word_pre_check_masks_exactly_what_every_pattern_masks(text):
    assert sanitize(text) == sanitize_everywhere(text)


_TEXT = st.lists(st.one_of(st.sampled_from(_FRAGMENTS), st.text(max_size=6)), max_size=6).map("".join)


@given(st.lists(_TEXT, max_size=6))
@settings(max_examples=1500, deadline=None)
def test_texts_checked_together_need_masking_whenever_one_of_them_does(texts):
    """The access line's values are checked with one search (``needs_masking``); it never passes a
    value that :func:`sanitize` would change."""
    if not needs_masking(*texts):
        assert [sanitize(text) for text in texts] == texts
    assert needs_masking(*texts) == any(needs_masking(text) for text in texts)
