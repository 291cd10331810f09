"""Bearer tokens for tests, signed with a key the test session creates.

``service_config`` points orders at the public half (``JWT_PUBLIC_KEY_FILE``)
with the issuer and audience below; ``token(email)`` / ``admin_token()``
mint what ``./run.sh token`` would, and ``bearer`` wraps one as a header.
"""
import os
import tempfile

from scripts.token import ensure_key, load_private_key, mint

ISSUER = "urn:orders:test"
AUDIENCE = "orders-api-test"
_KEY_DIR = tempfile.mkdtemp(prefix="orders-test-jwt-")
KEY_FILE = os.path.join(_KEY_DIR, "key.pem")
PUBLIC_KEY_FILE = ensure_key(KEY_FILE)
PRIVATE_KEY = load_private_key(KEY_FILE)

SETTINGS = {"JWT_PUBLIC_KEY_FILE": PUBLIC_KEY_FILE, "JWT_ISSUER": ISSUER, "JWT_AUDIENCE": AUDIENCE,
            "JWT_JWKS_URL": "", "JWT_DEV_HS256_SECRET": ""}


def token(email=None, admin=False, **claims):
    return mint(PRIVATE_KEY, email, admin, ISSUER, AUDIENCE, **claims)


def admin_token(**claims):
    return token(admin=True, **claims)


def bearer(value):
    return {"Authorization": "Bearer " + value}


def customer(email):
    """The Authorization header of ``email``'s customer token."""
    return bearer(token(email))


def admin():
    return bearer(admin_token())
