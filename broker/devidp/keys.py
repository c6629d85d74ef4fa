"""The development IdP's signing keys, persisted so that every worker and every restart uses the same ones.

They live in `<dir>/dev-idp-keys.json` (mode 0600), where `<dir>` is the `.broker-dev/` folder next to the
SQLite database file (or in the working directory for other databases). The file is created atomically:
written to a temporary file, then hard-linked into place, which fails if another process got there first;
the loser reads the winner's file. So concurrent first starts agree on one set of keys.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from broker.errors import ConfigError

KEYS_FILE = "dev-idp-keys.json"
DEV_DIR = ".broker-dev"
_CERT_DAYS = 3650


@dataclass(frozen=True, slots=True)
class DevIdpKeys:
    """PEM strings: the SAML IdP's key and self-signed certificate, and the OpenID Provider's own key."""

    saml_key_pem: str
    saml_cert_pem: str
    oidc_key_pem: str

    def __repr__(self) -> str:
        return "DevIdpKeys(***)"


def dev_dir(database_url: str, cwd: Path | None = None) -> Path:
    """`.broker-dev/` next to the SQLite database file, or in the working directory otherwise."""
    base = cwd or Path.cwd()
    prefix = "sqlite:///"
    if database_url.startswith(prefix):
        path = database_url[len(prefix):].split("?", 1)[0]
        if path and path != ":memory:":
            return (base / path).resolve().parent / DEV_DIR
    return base.resolve() / DEV_DIR


def _rsa_pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode("ascii")


def generate_keys(now: dt.datetime | None = None) -> DevIdpKeys:
    now = now or dt.datetime.now(dt.UTC)
    saml_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "broker development IdP (SAML signing)")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(saml_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=_CERT_DAYS))
        .sign(saml_key, hashes.SHA256())
    )
    oidc_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return DevIdpKeys(
        saml_key_pem=_rsa_pem(saml_key),
        saml_cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        oidc_key_pem=_rsa_pem(oidc_key),
    )


def _read(path: Path) -> DevIdpKeys:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return DevIdpKeys(saml_key_pem=str(data["saml_key_pem"]), saml_cert_pem=str(data["saml_cert_pem"]),
                          oidc_key_pem=str(data["oidc_key_pem"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"The development IdP's key file {path} cannot be read; delete it to start over.",
                          detail=str(exc)) from None


def load_or_create(directory: Path) -> DevIdpKeys:
    """The keys in `directory`/dev-idp-keys.json, created (atomically, once) if the file does not exist."""
    path = directory / KEYS_FILE
    if path.exists():
        return _read(path)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys = generate_keys()
    payload = json.dumps({"saml_key_pem": keys.saml_key_pem, "saml_cert_pem": keys.saml_cert_pem,
                          "oidc_key_pem": keys.oidc_key_pem}, indent=2)
    fd, tmp = tempfile.mkstemp(prefix=".dev-idp-keys.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:  # mkstemp: mode 0600
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic, and never replaces a file another process created first
        except FileExistsError:
            return _read(path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return keys


def demo_client_secret(secret_key: str) -> str:
    """The demo's OIDC client secret (connection dev-oidc at the dev OP): derived from BROKER_SECRET_KEY, so
    it is the same on every start (config apply stays idempotent) and never has to be stored."""
    return hmac.new(secret_key.encode(), b"broker demo: dev-oidc client secret", hashlib.sha256).hexdigest()
