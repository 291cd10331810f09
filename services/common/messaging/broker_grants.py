"""Who may do what on the broker: one RabbitMQ user per service, and an operator.

This module is the one source of the broker's users and permissions. From it
come ``./run.sh``'s users on a local development broker (``provision``,
through the management HTTP API) and the definitions file for production
(``deploy/rabbitmq/definitions.json``, ``definitions``); a unit test checks
the file is what this module generates.

Each service user may declare, bind, consume and publish only what its own
queues and the exchanges it uses need (RabbitMQ's configure / write / read
patterns), and topic permissions narrow what it may publish on the topic
exchanges: on ``nameko-rpc`` the routing key of an RPC request is
``<service>.<method>`` (nameko's ``MethodProxy``), so a service may call only
the methods listed in ``SERVICES[...].calls``; a reply goes to the caller's
reply queue, bound with the queue's UUID (``rpc.reply-<service>-<uuid>``), so
every service may publish UUID routing keys there. On ``<service>.events``
(nameko's event exchange) the routing key is the event type: a service may
publish only its own events, and bind only to the events it handles.
Catalogue writes, restock, notification preferences and dead-letter replay
are then the operator's alone (full rights on the vhost).

No service user may write to the default exchange (``amq.default``, which
routes by queue name to any queue of the vhost, past every topic
permission). Retries and dead letters go through the service's own
redelivery exchange instead (``<service>.redelivery``, consumers.py): only
that service may declare it or publish to it, and only its own queues are
bound to it (binding needs write on the queue, which no other service has),
so a service cannot put a message into another service's queue by any
route: not by the default exchange, not by another's redelivery exchange,
not by a queue of its own that dead-letters somewhere.

CLI::

    python -m services.common.messaging.broker_grants definitions [--vhost V]
    python -m services.common.messaging.broker_grants provision --amqp-uri URI --credentials FILE
    python -m services.common.messaging.broker_grants create-users --management-url URL --vhost V [--user-prefix P]
    python -m services.common.messaging.broker_grants hash-password   # reads the password on stdin

``provision`` is ./run.sh's (a local broker reached as guest, passwords
generated); ``create-users`` is the init step of compose and of a Kubernetes
Job (an admin user of the management API from ``RABBITMQ_ADMIN_USER`` /
``RABBITMQ_ADMIN_PASSWORD``, each role's password from
``<ROLE>_BROKER_PASSWORD``). Both create the same users with the same
grants, idempotently.
"""
import argparse
import base64
import hashlib
import json
import os
import re
import secrets
import shlex
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

RPC_EXCHANGE = "nameko-rpc"
DEFAULT_EXCHANGE = "amq.default"  # granted to no service user (operator: everything)
OPERATOR = "operator"
# a reply's routing key: the UUID the caller's reply queue is bound with (no dot,
# so it can never match a "<service>.*" request binding). No braces: RabbitMQ
# expands {name} in topic permission patterns.
REPLY_KEY = "[0-9a-f-]+"
NOTHING = "^$"


@dataclass(frozen=True)
class ServiceGrant:
    """What one service does on the broker.

    ``calls``: RPC methods it calls, as ``service.method``; ``publishes``: its
    event types; ``handles``: ``source -> event types`` its handlers consume.
    """
    name: str
    calls: tuple = ()
    publishes: tuple = ()
    handles: dict = field(default_factory=dict)


# Checked against the service classes by tests/unit/test_broker_grants.py.
SERVICES = {
    "orders": ServiceGrant(
        "orders",
        calls=("inventory.get_product", "inventory.list_products", "inventory.get_stock",
               "inventory.get_reservation", "inventory.ping"),
        publishes=("order_created", "order_confirmed", "order_rejected", "order_cancelled"),
        handles={"inventory": ("stock_reserved", "stock_rejected", "product_changed")},
    ),
    "inventory": ServiceGrant(
        "inventory",
        publishes=("stock_reserved", "stock_rejected", "stock_released", "product_changed"),
        handles={"orders": ("order_created", "order_cancelled")},
    ),
    "notifications": ServiceGrant(
        "notifications",
        handles={"orders": ("order_confirmed", "order_rejected", "order_cancelled")},
    ),
}

def redelivery_exchange(service):
    """The name of ``service``'s retry and dead-letter exchange (``consumers.redelivery_exchange``)."""
    return "{}.redelivery".format(service)


def _alternatives(names):
    return "|".join(re.escape(name) for name in names)


def calls(service):
    return tuple(SERVICES[service].calls)


def queue_pattern(service):
    """Every queue ``service`` declares and consumes, as one regex body (no anchors).

    ``rpc-<service>`` (its RPC entrypoints), ``rpc.reply-<service>-<uuid>``
    (replies to its calls), ``evt-<source>-<event>--<service>.<method>`` and
    their ``.backoff-<ms>ms`` retry queues (consumers.py), ``<service>.dead-letters``.
    """
    name = re.escape(service)
    parts = ["rpc-{}".format(name), r"rpc\.reply-{}-{}".format(name, REPLY_KEY),
             r"{}\.dead-letters".format(name)]
    grant = SERVICES[service]
    for source, events in sorted(grant.handles.items()):
        parts.append(r"evt-{}-({})--{}\.[A-Za-z0-9_]+(\.backoff-[0-9]+ms)?".format(
            re.escape(source), _alternatives(events), name))
    return "|".join(parts)


def permissions(service):
    """configure / write / read regexes of ``service``'s user on its vhost."""
    grant = SERVICES[service]
    queues = queue_pattern(service)
    own_events = re.escape("{}.events".format(service))
    redelivery = re.escape(redelivery_exchange(service))
    sources = [re.escape("{}.events".format(source)) for source in sorted(grant.handles)]
    rpc = re.escape(RPC_EXCHANGE)
    # declare: its queues, nameko-rpc, its own event and redelivery exchanges, the ones it consumes from
    configure = [queues, rpc, own_events, redelivery] + sources
    # publish to nameko-rpc, its event exchange, its redelivery exchange (retries, dead
    # letters; never amq.default); bind its queues (write on the queue)
    write = [queues, rpc, own_events, redelivery]
    # consume its queues; bind them to nameko-rpc, its redelivery exchange and the
    # event exchanges it consumes from (read on the exchange)
    read = [queues, rpc, redelivery] + sources
    return {kind: "^({})$".format("|".join(parts))
            for kind, parts in (("configure", configure), ("write", write), ("read", read))}


def topic_permissions(service):
    """Per exchange, the routing keys ``service`` may publish (write) and bind (read)."""
    grant = SERVICES[service]
    name = re.escape(service)
    allowed_calls = calls(service)
    rpc_write = "^({})$".format("|".join(([_alternatives(allowed_calls)] if allowed_calls else []) + [REPLY_KEY]))
    found = [{"exchange": RPC_EXCHANGE, "write": rpc_write,
              "read": r"^({}\.\*|{})$".format(name, REPLY_KEY)}]
    for source in sorted(SERVICES):
        write = "^({})$".format(_alternatives(grant.publishes)) if source == service and grant.publishes else NOTHING
        handled = grant.handles.get(source, ())
        read = "^({})$".format(_alternatives(handled)) if handled else NOTHING
        found.append({"exchange": "{}.events".format(source), "write": write, "read": read})
    return found


def user_name(role, prefix=""):
    return "{}{}".format(prefix, role)


def password_variable(role):
    """The environment / credentials-file variable holding ``role``'s broker password."""
    return "{}_BROKER_PASSWORD".format(role.upper())


ROLES = tuple(SERVICES) + (OPERATOR,)


def rabbit_password_hash(password, salt=None):
    """RabbitMQ's ``rabbit_password_hashing_sha256``: base64(salt + sha256(salt + password))."""
    salt = os.urandom(4) if salt is None else salt
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode("utf-8")).digest()).decode("ascii")


def definitions(vhost="/", prefix="", password_hashes=None):
    """A RabbitMQ definitions document (``rabbitmqctl import_definitions`` / ``load_definitions``)."""
    password_hashes = password_hashes or {}
    users, granted, topics = [], [], []
    for role in ROLES:
        user = user_name(role, prefix)
        users.append({
            "name": user,
            "password_hash": password_hashes.get(role, "<python -m services.common.messaging.broker_grants hash-password "
                                                       "< the {} password>".format(role)),
            "hashing_algorithm": "rabbit_password_hashing_sha256",
            "tags": [],
        })
        if role == OPERATOR:
            granted.append({"user": user, "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"})
            continue
        granted.append(dict({"user": user, "vhost": vhost}, **permissions(role)))
        for topic in topic_permissions(role):
            topics.append(dict({"user": user, "vhost": vhost}, **topic))
    return {"users": users, "vhosts": [{"name": vhost}], "permissions": granted, "topic_permissions": topics}


# -- provisioning a development broker through the management HTTP API --------

class Management:
    """The few calls of RabbitMQ's management HTTP API that provisioning needs."""

    def __init__(self, url, username, password, timeout=10):
        self.url = url.rstrip("/")
        token = base64.b64encode("{}:{}".format(username, password).encode()).decode()
        self.headers = {"Authorization": "Basic " + token, "Content-Type": "application/json"}
        self.timeout = timeout

    def request(self, method, path, body=None):
        request = urllib.request.Request(self.url + path, method=method, headers=self.headers,
                                         data=None if body is None else json.dumps(body).encode())
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            data = response.read()
        return json.loads(data) if data else None

    def put(self, path, body):
        return self.request("PUT", path, body)

    def delete(self, path):
        try:
            self.request("DELETE", path)
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise


def _q(value):
    return urllib.parse.quote(value, safe="")


def provision(management, vhost, passwords, prefix=""):
    """Create (or bring up to date) every user, its permissions and topic permissions. Idempotent."""
    document = definitions(vhost, prefix)
    management.put("/api/vhosts/{}".format(_q(vhost)), {})
    for user in document["users"]:
        role = user["name"][len(prefix):]
        management.put("/api/users/{}".format(_q(user["name"])), {"password": passwords[role], "tags": ""})
    for grant in document["permissions"]:
        management.put("/api/permissions/{}/{}".format(_q(vhost), _q(grant["user"])),
                       {key: grant[key] for key in ("configure", "write", "read")})
    # each exchange's topic permissions are overwritten in place, never cleared first:
    # a user with none on an exchange may use every routing key there
    for topic in document["topic_permissions"]:
        management.put("/api/topic-permissions/{}/{}".format(_q(vhost), _q(topic["user"])),
                       {key: topic[key] for key in ("exchange", "write", "read")})
    return document


def remove(management, prefix=""):
    """Delete the users ``provision`` created with ``prefix`` (their permissions go with them)."""
    for role in ROLES:
        management.delete("/api/users/{}".format(_q(user_name(role, prefix))))


def user_prefix(vhost):
    """Users are global to a broker: on a vhost other than "/", their names start with it."""
    return "" if vhost in ("", "/") else "{}.".format(vhost)


def amqp_uri_for(amqp_uri, user, password):
    """``amqp_uri`` with its credentials replaced."""
    parts = urllib.parse.urlsplit(amqp_uri)
    host = parts.netloc.rsplit("@", 1)[-1]
    netloc = "{}:{}@{}".format(_q(user), _q(password), host)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def local_admin(amqp_uri):
    """For a single local broker reached as RabbitMQ's default guest user: (host, vhost), else None.

    That is the development setup ./run.sh provisions; anything else is an
    operator's broker, whose users are theirs to manage (definitions file).
    """
    if ";" in amqp_uri.strip(";"):
        return None
    parts = urllib.parse.urlsplit(amqp_uri.strip(";"))
    if parts.username != "guest" or parts.hostname not in ("localhost", "127.0.0.1", "::1"):
        return None
    vhost = urllib.parse.unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    return parts.hostname, vhost, urllib.parse.unquote(parts.password or "guest")


def load_credentials(path):
    """``NAME=value`` lines of the credentials file, if it exists."""
    found = {}
    if path and os.path.exists(path):
        with open(path) as stream:
            for line in stream:
                name, sep, value = line.strip().partition("=")
                if sep and not name.startswith("#"):
                    found[name] = value
    return found


def ensure_passwords(path, environ=os.environ):
    """Each role's password: from the environment, else the credentials file, else generated and saved (mode 600)."""
    saved = load_credentials(path)
    passwords, changed = {}, False
    for role in ROLES:
        variable = password_variable(role)
        value = environ.get(variable) or saved.get(variable)
        if not value:
            value, changed = secrets.token_urlsafe(24), True
        if saved.get(variable) != value:
            saved[variable], changed = value, True
        passwords[role] = value
    if changed:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as stream:
            stream.write("# RabbitMQ passwords of the development users (services/common/messaging/broker_grants.py)\n")
            for name in sorted(saved):
                stream.write("{}={}\n".format(name, saved[name]))
    os.chmod(path, 0o600)
    return passwords


def _provision_command(args):
    found = local_admin(args.amqp_uri)
    if found is None:
        return 0  # not the local development broker: nothing to do, AMQP_URI stays as given
    host, vhost, admin_password = found
    passwords = ensure_passwords(args.credentials)
    prefix = user_prefix(vhost)
    management = Management(args.management_url or "http://{}:15672".format(host), "guest", admin_password)
    try:
        provision(management, vhost, passwords, prefix)
    except (OSError, urllib.error.URLError) as exc:
        print("could not create the broker users through the management API ({}); is the "
              "rabbitmq_management plugin enabled?".format(exc), file=sys.stderr)
        return 1
    for role in ROLES:
        uri = amqp_uri_for(args.amqp_uri, user_name(role, prefix), passwords[role])
        variable = "AMQP_URI" if role == OPERATOR else "{}_AMQP_URI".format(role.upper())
        print("export {}={}".format(variable, shlex.quote(uri)))
    return 0


def _create_users_command(args, environ=os.environ):
    missing = [password_variable(role) for role in ROLES if not environ.get(password_variable(role))]
    missing += [name for name in ("RABBITMQ_ADMIN_USER", "RABBITMQ_ADMIN_PASSWORD") if not environ.get(name)]
    if missing:
        print("create-users needs {} in the environment".format(", ".join(missing)), file=sys.stderr)
        return 2
    passwords = {role: environ[password_variable(role)] for role in ROLES}
    management = Management(args.management_url, environ["RABBITMQ_ADMIN_USER"], environ["RABBITMQ_ADMIN_PASSWORD"])
    deadline = time.monotonic() + args.wait
    while True:  # the management plugin answers a little after the AMQP port
        try:
            provision(management, args.vhost, passwords, args.user_prefix)
            break
        except (OSError, urllib.error.URLError) as exc:
            if time.monotonic() >= deadline:
                print("could not create the broker users at {}: {}".format(args.management_url, exc),
                      file=sys.stderr)
                return 1
            time.sleep(2)
    print("broker users {} ready on vhost {}".format(
        ", ".join(user_name(role, args.user_prefix) for role in ROLES), args.vhost), file=sys.stderr)
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    document = commands.add_parser("definitions", help="print the RabbitMQ definitions (password hashes as placeholders)")
    document.add_argument("--vhost", default="/")
    create = commands.add_parser("provision", help="create the users on a local development broker; "
                                                   "prints shell exports of each service's AMQP URI")
    create.add_argument("--amqp-uri", required=True)
    create.add_argument("--credentials", required=True)
    create.add_argument("--management-url")
    users = commands.add_parser("create-users", help="create the users through a broker's management API "
                                                     "(compose's and Kubernetes' init step)")
    users.add_argument("--management-url", required=True)
    users.add_argument("--vhost", required=True)
    users.add_argument("--user-prefix", default="")
    users.add_argument("--wait", type=float, default=120, help="seconds to wait for the management API")
    commands.add_parser("hash-password", help="RabbitMQ's sha256 hash of the password read from stdin")
    args = parser.parse_args(argv)
    if args.command == "definitions":
        json.dump(definitions(args.vhost), sys.stdout, indent=2)
        print()
        return 0
    if args.command == "create-users":
        return _create_users_command(args)
    if args.command == "hash-password":
        print(rabbit_password_hash(sys.stdin.readline().rstrip("\n")))
        return 0
    return _provision_command(args)


if __name__ == "__main__":
    sys.exit(main())
