"""Ed25519 keys and the DSSE envelope that signs a bundle's in-toto statement.

The envelope is standard DSSE (``payloadType`` ``application/vnd.in-toto+json``, the payload
base64, each signature over the DSSE pre-authentication encoding), made and checked with
securesystemslib, the library in-toto itself signs with. Keys are PEM files: PKCS#8 for the
private key (mode 0600), SubjectPublicKeyInfo for the public one, so ``openssl`` and
``cryptography`` read them as they are.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import CryptoSigner, SSlibKey

from vfio_hil.lab.errors import BundleInvalid, CertError

#: DSSE payload type of an in-toto statement.
PAYLOAD_TYPE = "application/vnd.in-toto+json"


def keygen(private_path: Path, public_path: Path) -> str:
    """Write a new Ed25519 key pair (refusing to overwrite either file) and return its key
    id (securesystemslib's: the SHA-256 of the canonical public key)."""
    for path in (private_path, public_path):
        if path.exists():
            raise CertError(f"{path} exists: keygen does not overwrite a key")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(private_pem)
    public_path.write_bytes(public_pem)
    return key_id(key.public_key())


def key_id(public: Ed25519PublicKey) -> str:
    """The key id a signature of this key carries."""
    return str(SSlibKey.from_crypto(public).keyid)


def load_private(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in the PEM file ``path``; CertError naming what is wrong."""
    key = _load(path, "private", lambda data: serialization.load_pem_private_key(data, None))
    if not isinstance(key, Ed25519PrivateKey):
        raise CertError(f"{path}: not an Ed25519 key ({type(key).__name__})")
    return key


def load_public(path: Path) -> Ed25519PublicKey:
    """The Ed25519 public key in the PEM file ``path``; CertError naming what is wrong."""
    key = _load(path, "public", serialization.load_pem_public_key)
    if not isinstance(key, Ed25519PublicKey):
        raise CertError(f"{path}: not an Ed25519 public key ({type(key).__name__})")
    return key


def _load(path: Path, kind: str, loader: Callable[[bytes], Any]) -> Any:
    """The key ``loader`` reads from the PEM file ``path``."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CertError(f"cannot read key {path}: {exc.strerror}") from None
    try:
        return loader(data)
    except TypeError:
        raise CertError(f"{path}: the key is encrypted; give an unencrypted PEM key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise CertError(f"{path}: not a PEM {kind} key") from None


def sign(statement: bytes, key: Ed25519PrivateKey) -> dict[str, Any]:
    """The DSSE envelope (as JSON data) of the statement bytes, signed with ``key``."""
    signer = CryptoSigner(key, SSlibKey.from_crypto(key.public_key()))
    envelope = Envelope(payload=statement, payload_type=PAYLOAD_TYPE, signatures={})
    envelope.sign(signer)
    return envelope.to_dict()


def open_envelope(data: Any, public: Ed25519PublicKey) -> dict[str, Any]:
    """The statement inside the envelope ``data``, once its signature by ``public`` holds;
    BundleInvalid naming what does not."""
    try:
        envelope = Envelope.from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise BundleInvalid("the statement's envelope is not a DSSE envelope") from None
    if envelope.payload_type != PAYLOAD_TYPE:
        raise BundleInvalid(f"the envelope's payload type is {envelope.payload_type!r}")
    try:
        envelope.verify([SSlibKey.from_crypto(public)], 1)
    except VerificationError:
        raise BundleInvalid(
            "the statement's signature does not verify with this public key"
        ) from None
    try:
        statement = json.loads(envelope.payload)
    except ValueError:
        raise BundleInvalid("the signed payload is not JSON") from None
    if not isinstance(statement, dict):
        raise BundleInvalid("the signed payload is not an in-toto statement")
    return statement
