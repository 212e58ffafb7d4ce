"""AMQPS with pika: a broker configured by a rabbitmq.conf file (``--config``)
with ``listeners.ssl.default`` and ``ssl_options.*``, a CA and server
certificate made by the test (``cryptography``).

* a client trusting the CA publishes and consumes over TLS;
* a client trusting another CA refuses the server's certificate.
"""

import datetime
import ipaddress
import shutil
import ssl
import tempfile
import uuid
from pathlib import Path

import pika
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conftest import BrokerProcess, find_free_port, warren_binary


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject, subject_key, issuer, issuer_key, *, ca, ip=None):
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder()
         .subject_name(_name(subject))
         .issuer_name(_name(issuer))
         .public_key(subject_key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        b = b.add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key.public_key()), critical=False)
    else:
        b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                            critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _write_pem(path, cert=None, key=None):
    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))


def _make_ca(d, name):
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert(f"Warren test CA {name}", key, f"Warren test CA {name}", key, ca=True)
    _write_pem(d / f"{name}-ca.pem", cert=cert)
    return cert, key


@pytest.fixture(scope="module")
def tls_broker():
    """(broker, tls_port, certificate dir): a private warren with AMQPS."""
    import os
    if os.environ.get("AMQP_TEST_PORT"):
        pytest.skip("needs to spawn its own broker (AMQP_TEST_PORT is set)")
    d = Path(tempfile.mkdtemp(prefix="warren-pytest-tls-"))
    _, ca_key = _make_ca(d, "main")
    _make_ca(d, "other")
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _cert("warren", server_key, "Warren test CA main", ca_key, ca=False, ip="127.0.0.1")
    _write_pem(d / "server.pem", cert=server)
    _write_pem(d / "server.key", key=server_key)
    tls_port = find_free_port()
    conf = d / "warren.conf"
    conf.write_text(
        "# AMQPS for test_14_tls.py\n"
        f"listeners.ssl.default = {tls_port}\n"
        f"ssl_options.cacertfile = {d / 'main-ca.pem'}\n"
        f"ssl_options.certfile = {d / 'server.pem'}\n"
        f"ssl_options.keyfile = {d / 'server.key'}\n"
        "ssl_options.verify = verify_none  # no client certificates\n"
    )
    proc = BrokerProcess(warren_binary(), d / "data", d / "warren.log", extra_args=("--config", str(conf)))
    proc.start()
    try:
        yield proc, tls_port, d
    finally:
        proc.stop()
        shutil.rmtree(d, ignore_errors=True)


def _tls_params(port, cafile):
    context = ssl.create_default_context(cafile=str(cafile))
    return pika.ConnectionParameters(
        host="127.0.0.1", port=port, connection_attempts=1, socket_timeout=5, stack_timeout=15,
        ssl_options=pika.SSLOptions(context, "127.0.0.1"))


def test_publish_and_consume_over_tls(tls_broker):
    _, port, d = tls_broker
    conn = pika.BlockingConnection(_tls_params(port, d / "main-ca.pem"))
    try:
        ch = conn.channel()
        q = f"tls-{uuid.uuid4().hex[:8]}"
        ch.queue_declare(queue=q, exclusive=True)
        ch.confirm_delivery()
        ch.basic_publish(exchange="", routing_key=q, body=b"hello over TLS")
        got = []

        def on_message(channel, method, _props, body):
            got.append(body)
            channel.basic_ack(method.delivery_tag)
            channel.stop_consuming()

        ch.basic_consume(queue=q, on_message_callback=on_message)
        conn.call_later(5, ch.stop_consuming)
        ch.start_consuming()
        assert got == [b"hello over TLS"]
    finally:
        conn.close()


def test_server_certificate_from_another_ca_is_refused(tls_broker):
    _, port, d = tls_broker
    # pika passes the ssl module's verification error through.
    with pytest.raises((ssl.SSLError, pika.exceptions.AMQPConnectionError)):
        pika.BlockingConnection(_tls_params(port, d / "other-ca.pem"))
    # The broker is unaffected: a client with the right CA still gets in.
    pika.BlockingConnection(_tls_params(port, d / "main-ca.pem")).close()
