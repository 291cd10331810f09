import pytest


@pytest.fixture
def backend():
    """End-to-end tests run on SQLite unless a test asks for PostgreSQL."""
    return "sqlite"
