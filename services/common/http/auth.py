"""Who is calling an HTTP API (orders' front door, inventory's catalogue admin API):
OAuth 2 / OpenID Connect bearer tokens (JWTs).

One verifier for every service that serves HTTP, configured by the same
``JWT_*`` keys of ``config.yaml``, so a token means the same everywhere.

Tokens are verified with PyJWT against keys from configuration, in this order:

- ``JWT_JWKS_URL``: the identity provider's JSON Web Key Set (PyJWT's
  ``PyJWKClient``, keys cached for ``JWT_JWKS_CACHE_SECONDS``);
- ``JWT_PUBLIC_KEY_FILE``: one PEM public key (RSA: RS256, EC P-256: ES256);
- ``JWT_DEV_HS256_SECRET``: a shared secret, for development only.

``JWT_ISSUER`` and ``JWT_AUDIENCE`` must match and ``exp``, ``iss``, ``aud``
and ``sub`` must be present. With no key or no issuer/audience configured
every token is refused (deny by default). The identity is the token's
``sub`` and ``email`` (ignored when ``email_verified`` is false); ``JWT_ADMIN_SCOPE`` (``orders:admin``) in ``scope``
(space-separated) or ``scp`` (a list) makes an operator (orders: any
customer's orders; inventory: catalogue writes).
"""
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from nameko.extensions import DependencyProvider

from services.common.errors import ServiceUnavailable
from services.common.http.front_door import Forbidden, Unauthorized

log = logging.getLogger(__name__)

DEFAULT_ADMIN_SCOPE = "orders:admin"
DEFAULT_ALGORITHMS = ("RS256", "ES256")
DEFAULT_LEEWAY = 30
DEFAULT_JWKS_CACHE_SECONDS = 300
DEFAULT_JWKS_COOLDOWN = 30
REQUIRED_CLAIMS = ["exp", "iss", "aud", "sub"]
MAX_TOKEN_LENGTH = 8192
# Verified tokens remembered (an ES256 check costs about 0.3 ms of CPU; a
# client sends the same token with every request): at most this many, each
# for at most VERIFIED_TTL seconds and never past its own exp.
VERIFIED_CACHE_SIZE = 4096
VERIFIED_TTL = 60


def normalise_email(email):
    """Emails are compared without regard to case (what customers expect of an address)."""
    return str(email or "").strip().lower()


def _challenge(error=None, description=None, scope=None, realm="orders"):
    """The ``WWW-Authenticate`` value of RFC 6750, section 3 (the realm: the service's name)."""
    parts = ['realm="{}"'.format(realm)]
    if error:
        parts.append('error="{}"'.format(error))
    if description:
        parts.append('error_description="{}"'.format(description.replace('"', "'")))
    if scope:
        parts.append('scope="{}"'.format(scope))
    return "Bearer " + ", ".join(parts)


class NotAuthenticated(Unauthorized):
    """401: no usable bearer token; ``headers`` carries the RFC 6750 challenge."""

    def __init__(self, message, error=None, realm="orders"):
        super().__init__(message, details={"Authorization": [message]})
        self.headers = {"WWW-Authenticate": _challenge(error, message if error else None, realm=realm)}


class InsufficientScope(Forbidden):
    code = "insufficient_scope"

    def __init__(self, scope, realm="orders"):
        message = "This needs the {} scope.".format(scope)
        super().__init__(message, details={"Authorization": [message]})
        self.headers = {"WWW-Authenticate": _challenge("insufficient_scope", message, scope, realm)}


@dataclass(frozen=True)
class Identity:
    subject: str
    email: str = ""  # normalised; empty when the token has none
    scopes: frozenset = field(default_factory=frozenset)
    admin: bool = False


def _scopes(claims):
    scopes = set()
    if isinstance(claims.get("scope"), str):
        scopes.update(claims["scope"].split())
    if isinstance(claims.get("scp"), (list, tuple)):
        scopes.update(str(scope) for scope in claims["scp"])
    elif isinstance(claims.get("scp"), str):
        scopes.update(claims["scp"].split())
    return frozenset(scopes)


def _algorithms_for(key):
    if isinstance(key, rsa.RSAPublicKey):
        return ["RS256"]
    if isinstance(key, ec.EllipticCurvePublicKey):
        return {"secp256r1": ["ES256"], "secp384r1": ["ES384"], "secp521r1": ["ES512"]}[key.curve.name]
    raise ValueError("JWT_PUBLIC_KEY_FILE must hold an RSA or EC public key")


def _setting(config, key, default=""):
    value = config.get(key)
    return default if value is None or value == "" else value


class TokenVerifier:
    """Turns a bearer token into an ``Identity``, or raises ``NotAuthenticated``."""

    def __init__(self, config, realm="orders"):
        self.realm = realm
        self.issuer = str(_setting(config, "JWT_ISSUER"))
        self.audience = str(_setting(config, "JWT_AUDIENCE"))
        self.admin_scope = str(_setting(config, "JWT_ADMIN_SCOPE", DEFAULT_ADMIN_SCOPE))
        self.leeway = float(_setting(config, "JWT_LEEWAY", DEFAULT_LEEWAY))
        algorithms = str(_setting(config, "JWT_ALGORITHMS", ",".join(DEFAULT_ALGORITHMS)))
        self.algorithms = [name.strip() for name in algorithms.split(",") if name.strip()]
        self.jwks = None
        self.key = None
        self.problem = None
        jwks_url = str(_setting(config, "JWT_JWKS_URL"))
        key_file = str(_setting(config, "JWT_PUBLIC_KEY_FILE"))
        secret = str(_setting(config, "JWT_DEV_HS256_SECRET"))
        if jwks_url:
            # a kid not in the cached set refetches it (key rotation), at most
            # once per cooldown (a flood of made-up kids cannot hammer the provider)
            self.jwks = jwt.PyJWKClient(
                jwks_url, cache_keys=True, timeout=5,
                lifespan=float(_setting(config, "JWT_JWKS_CACHE_SECONDS", DEFAULT_JWKS_CACHE_SECONDS)),
                cooldown_duration=float(_setting(config, "JWT_JWKS_REFRESH_COOLDOWN", DEFAULT_JWKS_COOLDOWN)))
            self.algorithms = [name for name in self.algorithms if not name.startswith("HS")]
        elif key_file:
            try:
                with open(key_file, "rb") as stream:
                    self.key = load_pem_public_key(stream.read())
                self.algorithms = _algorithms_for(self.key)
            except (OSError, ValueError) as exc:
                self.problem = "cannot read JWT_PUBLIC_KEY_FILE {}: {}".format(key_file, exc)
        elif secret:
            if len(secret) < 32:
                self.problem = "JWT_DEV_HS256_SECRET must be at least 32 characters"
            else:
                log.warning("auth: accepting HS256 tokens signed with JWT_DEV_HS256_SECRET "
                            "(development only; use JWT_JWKS_URL or JWT_PUBLIC_KEY_FILE in production)")
                self.key, self.algorithms = secret, ["HS256"]
        else:
            self.problem = "no JWT_JWKS_URL, JWT_PUBLIC_KEY_FILE or JWT_DEV_HS256_SECRET configured"
        if self.problem is None and not (self.issuer and self.audience):
            self.problem = "JWT_ISSUER and JWT_AUDIENCE must both be configured"
        if self.problem:
            log.error("auth: %s; every request that needs a token is refused", self.problem)
        self._verified = OrderedDict()  # token -> (identity, valid until)

    def identity(self, authorization):
        """The caller named by an ``Authorization`` header value."""
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if not scheme:
            raise self._refused("This needs a bearer token: Authorization: Bearer <token>.")
        if scheme.lower() != "bearer" or not token or " " in token:
            raise self._refused("The Authorization header is not a Bearer token.", "invalid_request")
        if len(token) > MAX_TOKEN_LENGTH:
            raise self._refused("The token is too long.", "invalid_token")
        if self.problem:
            raise self._refused("Tokens cannot be verified by this deployment.", "invalid_token")
        now = time.time()
        cached = self._verified.get(token)
        if cached is not None and cached[1] > now:
            self._verified.move_to_end(token)
            return cached[0]
        identity, expires = self._verify(token)
        self._verified[token] = (identity, min(expires, now + VERIFIED_TTL))
        if len(self._verified) > VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)
        return identity

    def _verify(self, token):
        """``(identity, exp)`` of a token, checked in full."""
        try:
            claims = jwt.decode(token, self._key(token), algorithms=self.algorithms,
                                audience=self.audience, issuer=self.issuer, leeway=self.leeway,
                                options={"require": REQUIRED_CLAIMS, "verify_signature": True})
        except jwt.ExpiredSignatureError:
            raise self._refused("The token has expired.", "invalid_token") from None
        except jwt.ImmatureSignatureError:
            raise self._refused("The token is not valid yet.", "invalid_token") from None
        except jwt.InvalidAudienceError:
            raise self._refused("The token is not meant for this API (audience).", "invalid_token") from None
        except jwt.InvalidIssuerError:
            raise self._refused("The token's issuer is not trusted.", "invalid_token") from None
        except jwt.MissingRequiredClaimError as exc:
            raise self._refused("The token lacks the {} claim.".format(exc.claim), "invalid_token") from None
        except jwt.PyJWKClientConnectionError:
            log.warning("auth: the JWKS endpoint did not answer")
            raise ServiceUnavailable("The identity provider's keys cannot be fetched; try again shortly.",
                                     details={"Authorization": ["Cannot verify tokens right now."]}) from None
        except (jwt.PyJWTError, ValueError, TypeError):
            # bad signature, alg none or not allowed, unknown kid, malformed
            # token or header: nothing more is told to the caller
            raise self._refused("The token is not valid.", "invalid_token") from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise self._refused("The token's subject is not valid.", "invalid_token")
        scopes = _scopes(claims)
        email = claims.get("email") if isinstance(claims.get("email"), str) else ""
        if claims.get("email_verified") is False:
            # orders belong to an email: one the provider has not verified
            # could be anybody's, so it names no customer
            email = ""
        return Identity(subject=subject, email=normalise_email(email), scopes=scopes,
                        admin=self.admin_scope in scopes), float(claims["exp"])

    def _refused(self, message, error=None):
        return NotAuthenticated(message, error, self.realm)

    def require_admin(self, identity):
        """``identity`` if it holds the admin scope; 403 insufficient_scope otherwise."""
        if not identity.admin:
            raise InsufficientScope(self.admin_scope, self.realm)
        return identity

    def _key(self, token):
        if self.jwks is not None:
            return self.jwks.get_signing_key_from_jwt(token).key
        return self.key


class BearerAuth(DependencyProvider):
    """The service's ``TokenVerifier``, built once per container (keys read, JWKS cached)."""

    def setup(self):
        self.verifier = TokenVerifier(self.container.config, realm=self.container.service_name)

    def get_dependency(self, worker_ctx):
        return self.verifier
