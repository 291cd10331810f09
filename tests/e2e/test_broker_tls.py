"""TLS to the broker: amqps:// with a CA file and a client certificate (AMQP_SSL).

A private RabbitMQ node (tests/support/broker.py) listens for TLS with a server
certificate from a CA this test makes, and requires a client certificate
from the same CA. Every connection the services open goes over it: nameko's
consumers and RPC, the outbox, retries and health checks
(services.common.messaging.brokers.ssl_options).
"""
import datetime
import ipaddress
import ssl

import eventlet
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kombu import Connection
from nameko.standalone.rpc import ClusterRpcProxy

from services.inventory.service import InventoryService
from services.orders.service import OrdersService
from tests.support import eventually, tokens
from tests.support.broker import PrivateBroker


def _write(path, data):
    path.write_bytes(data)
    return str(path)


def _key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _certificate(subject, key, issuer, issuer_key, ca=False, names=()):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
    return builder.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def make_ca(directory, name):
    key = ec.generate_private_key(ec.SECP256R1())
    return {"name": name, "key": key,
            "cert": _write(directory / "{}.pem".format(name), _certificate(name, key, name, key, ca=True))}


def issue(directory, ca, name, names=()):
    key = ec.generate_private_key(ec.SECP256R1())
    return (_write(directory / "{}.pem".format(name), _certificate(name, key, ca["name"], ca["key"], names=names)),
            _write(directory / "{}.key".format(name), _key_pem(key)))


@pytest.fixture
def pki(tmp_path):
    directory = tmp_path / "pki"
    directory.mkdir()
    ca = make_ca(directory, "test-ca")
    server = issue(directory, ca, "broker", names=[x509.DNSName("localhost"),
                                                   x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client = issue(directory, ca, "orders-client")
    return {"ca": ca, "server": server, "client": client, "other_ca": make_ca(directory, "other-ca"),
            "directory": directory}


@pytest.fixture
def tls_broker(tmp_path, pki, request):
    broker = PrivateBroker(tmp_path / "rabbitmq", tls={
        "cacertfile": pki["ca"]["cert"], "certfile": pki["server"][0], "keyfile": pki["server"][1]})
    try:
        broker.start()
        yield broker
    finally:
        broker.close()


def tls_settings(broker, pki):
    return {"AMQP_URI": "amqps://guest:guest@localhost:{}/".format(broker.tls_port),
            "AMQP_SSL": {"ca_certs": pki["ca"]["cert"], "certfile": pki["client"][0],
                         "keyfile": pki["client"][1], "server_hostname": None}}


def connects(uri, ssl_options):
    with Connection(uri, ssl=ssl_options, connect_timeout=5) as connection:
        connection.connect()
        return connection.connected


def test_the_services_work_over_tls_with_a_client_certificate(tls_broker, pki, service_config, container_factory):
    config = dict(service_config, **tls_settings(tls_broker, pki))
    config["METRICS_PORTS"] = {"orders": 0, "inventory": 0}
    containers = [container_factory(cls, dict(config, AMQP_SSL=dict(config["AMQP_SSL"])))
                  for cls in (InventoryService, OrdersService)]
    for container in containers:
        container.start()
    with ClusterRpcProxy(dict(config, AMQP_SSL=dict(config["AMQP_SSL"])), timeout=10) as rpc:
        rpc.inventory.create_product("T-1", "Tin", 120, 3)  # its product_changed leaves through the outbox
        eventually(lambda: [item["sku"] for item in rpc.orders.list_catalogue()] == ["T-1"], message="catalogue")
        placed = requests.post("http://{}/orders".format(config["WEB_SERVER_ADDRESS"]), timeout=10,
                               headers=tokens.customer("ann@example.com"),
                               json={"lines": [{"sku": "T-1", "quantity": 1}]})
        assert placed.status_code == 202, placed.text
        eventually(lambda: rpc.orders.get_order(placed.json()["id"])["status"] == "confirmed", message="confirmed")
    ready = requests.get("http://{}/ready".format(config["WEB_SERVER_ADDRESS"]), timeout=10)
    assert ready.status_code == 200, ready.text
    for container in containers:  # an orderly stop over TLS, as on SIGTERM
        with eventlet.Timeout(30):
            container.stop()


def test_the_broker_refuses_a_client_without_a_certificate_and_the_client_refuses_an_unknown_broker(
        tls_broker, pki):
    settings = tls_settings(tls_broker, pki)
    assert connects(settings["AMQP_URI"], dict(settings["AMQP_SSL"]))
    with pytest.raises((ssl.SSLError, OSError, ConnectionError)):
        connects(settings["AMQP_URI"], {"ca_certs": pki["ca"]["cert"], "server_hostname": None})
    with pytest.raises(ssl.SSLCertVerificationError):
        connects(settings["AMQP_URI"], dict(settings["AMQP_SSL"], ca_certs=pki["other_ca"]["cert"]))
    # the host name is checked: the certificate does not name broker.example.com
    with pytest.raises(ssl.SSLCertVerificationError):
        connects(settings["AMQP_URI"], dict(settings["AMQP_SSL"], server_hostname="broker.example.com"))
