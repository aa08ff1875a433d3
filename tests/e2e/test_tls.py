"""TLS through BentoML's own settings (``bentoml serve --ssl-certfile --ssl-keyfile``, docs/deploy.md), with API keys.

A throw-away certificate authority and a server certificate for 127.0.0.1 are made in the test: a client that
verifies against that CA classifies over HTTPS (ours and BentoML's, each with its key), one that does not trust it
is refused, and plain HTTP to the TLS port fails at once without harming the server.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import time
from pathlib import Path

import bentoml
import httpx
import pytest

from benchmark.harness import Server, answers_ok, start
from clients.client import FashionClient, ServiceError
from fashion.samples import sample_paths
from service.auth import new_key
from tests.helpers import wait_until

START_TIMEOUT_S = 300  # a hang guard: the server is ready in well under a minute


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate for 127.0.0.1 signed by it: ``(ca.pem, server.pem, server-key.pem)``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def certificate(subject: str, key, issuer: str, issuer_key, ca: bool) -> x509.Certificate:
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate("fashion-serve test CA", ca_key, "fashion-serve test CA", ca_key, ca=True)
    server = certificate("127.0.0.1", server_key, "fashion-serve test CA", ca_key, ca=False)
    paths = folder / "ca.pem", folder / "server.pem", folder / "server-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return paths


@pytest.fixture(scope="module")
def tls_server(exported, bentoml_home, tmp_path_factory):
    """The service over TLS with one inference key: ``(https URL, CA file, key)``."""
    from export.store import register_model

    for model_dir in exported.values():
        register_model(model_dir)
    folder = tmp_path_factory.mktemp("tls")
    ca, cert, cert_key = make_certificates(folder)
    key, entry = new_key(["inference"])
    server = start(folder, env={"FASHION_API_KEYS": entry.line(), "FASHION_BACKENDS": "onnx-torch"},
                   models=Path(bentoml_home) / "models", health_port=True,
                   options=("--ssl-certfile", str(cert), "--ssl-keyfile", str(cert_key)))
    try:
        wait_until(lambda: probed_ready(server), "the TLS server to be ready", START_TIMEOUT_S, interval=0.25)
        yield server.url, ca, key
    finally:
        server.stop()


def probed_ready(server: Server) -> bool:
    """Ready, as the probe port says (it speaks plain HTTP: it is for the kubelet, inside the pod's network)."""
    if server.proc.poll() is not None:
        raise RuntimeError(f"the TLS server exited: {server.log.read_text()[-2000:]}")
    return answers_ok(f"{server.health_url}/readyz")


def test_a_client_trusting_the_ca_classifies_over_https_with_its_key(tls_server):
    url, ca, key = tls_server
    assert url.startswith("https://127.0.0.1:")
    trusted = ssl.create_default_context(cafile=str(ca))
    with FashionClient(url, api_key=key, verify=trusted) as client:
        prediction = client.classify(sample_paths()[0])
        assert prediction.label and 0 <= prediction.confidence <= 1
    with FashionClient(url, api_key="", verify=trusted) as client, pytest.raises(ServiceError) as refused:
        client.classify(sample_paths()[0])
    assert refused.value.status == 401


def test_bentoml_s_own_client_sends_its_token_as_the_key(tls_server, monkeypatch):
    url, ca, key = tls_server
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # httpx (under BentoML's client) reads it for verification
    with bentoml.SyncHTTPClient(url, token=key, timeout=30) as client:
        answers = client.classify_array(pixels=[[[0] * 28] * 28])
    assert len(answers) == 1 and "label" in answers[0]


def test_a_client_not_trusting_the_ca_is_refused(tls_server):
    url, _, _ = tls_server
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{url}/readyz", timeout=10)


def test_plain_http_to_the_tls_port_fails_at_once_and_the_server_carries_on(tls_server):
    url, ca, _ = tls_server
    plain = url.replace("https://", "http://")
    started = time.monotonic()
    with pytest.raises(httpx.TransportError) as failed:
        httpx.get(f"{plain}/readyz", timeout=10)
    assert not isinstance(failed.value, httpx.TimeoutException)
    assert time.monotonic() - started < 10  # a hang guard: it fails in the TLS handshake, not at a timeout
    assert httpx.get(f"{url}/readyz", verify=ssl.create_default_context(cafile=str(ca)), timeout=10).status_code == 200
