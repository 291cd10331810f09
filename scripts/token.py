"""Development bearer tokens for the orders HTTP API.

``./run.sh`` calls ``--ensure-key`` once to create an EC P-256 signing key
(``var/dev-jwt-key.pem``, private, and ``var/dev-jwt-key.pub.pem``, which
orders verifies with through ``JWT_PUBLIC_KEY_FILE``); ``./run.sh token
EMAIL [--admin]`` prints a token for that customer (or an operator with the
admin scope) alone on stdout. In production an identity provider issues the
tokens and this key is not used (docs/http-api.md).
"""
import argparse
import os
import sys
import time
import uuid

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

DEFAULT_KEY = os.path.join("var", "dev-jwt-key.pem")
DEFAULT_ISSUER = "urn:orders:dev"
DEFAULT_AUDIENCE = "orders-api"
ADMIN_SCOPE = "orders:admin"


def public_key_path(private_path):
    root, ext = os.path.splitext(private_path)
    return root + ".pub" + ext


def ensure_key(path=DEFAULT_KEY):
    """Create the signing key pair at ``path`` (private, mode 600) if missing; the public key's path."""
    public_path = public_key_path(path)
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(pem)
    if not os.path.exists(public_path):
        with open(path, "rb") as stream:
            key = serialization.load_pem_private_key(stream.read(), password=None)
        with open(public_path, "wb") as stream:
            stream.write(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo))
    return public_path


def mint(private_key, email=None, admin=False, issuer=DEFAULT_ISSUER, audience=DEFAULT_AUDIENCE,
         ttl=3600, subject=None, algorithm="ES256", headers=None, **claims):
    """A signed token; ``claims`` add or override (``None`` removes a claim)."""
    now = int(time.time())
    payload = {"iss": issuer, "aud": audience, "iat": now, "nbf": now, "exp": now + ttl,
               "sub": subject or ("customer:" + email if email else "operator:" + uuid.uuid4().hex[:8]),
               "jti": uuid.uuid4().hex}
    if email:
        payload["email"] = email
    if admin:
        payload["scope"] = ADMIN_SCOPE
    payload.update(claims)
    payload = {name: value for name, value in payload.items() if value is not None}
    return jwt.encode(payload, private_key, algorithm=algorithm, headers=headers)


def load_private_key(path=DEFAULT_KEY):
    with open(path, "rb") as stream:
        return serialization.load_pem_private_key(stream.read(), password=None)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("email", nargs="?", help="the customer the token is for")
    parser.add_argument("--admin", action="store_true", help="add the orders:admin scope")
    parser.add_argument("--ttl", type=int, default=3600, help="seconds the token is valid (3600)")
    parser.add_argument("--key", default=os.environ.get("JWT_DEV_PRIVATE_KEY_FILE") or DEFAULT_KEY)
    parser.add_argument("--ensure-key", action="store_true", help="only create the key pair if missing")
    parser.add_argument("--config", help="ignored; accepted like the other scripts")
    args = parser.parse_args(argv)
    if args.ensure_key:
        print(ensure_key(args.key))
        return 0
    if not args.email and not args.admin:
        parser.error("give an EMAIL, or --admin for an operator token")
    if not os.path.exists(args.key):
        ensure_key(args.key)
    issuer = os.environ.get("JWT_ISSUER") or DEFAULT_ISSUER
    audience = os.environ.get("JWT_AUDIENCE") or DEFAULT_AUDIENCE
    print(mint(load_private_key(args.key), args.email, args.admin, issuer, audience, args.ttl))
    return 0


if __name__ == "__main__":
    sys.exit(main())
