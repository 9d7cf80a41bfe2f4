"""The mutation routes' tests run on both backends, as the read routes' do (``tests/api/conftest.py``
says how; a test of something that exists only on PostgreSQL is marked
``@pytest.mark.backends("postgresql")``)."""

from tests.api.conftest import app, backend, client, pytest_configure, pytest_generate_tests, runtime  # noqa: F401
