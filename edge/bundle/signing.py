"""Signed bundle archives: a detached ed25519 signature beside the archive (ARCHIVE.sig).

    edge pack BUNDLE OUT.tar.gz --sign plant_key          # writes OUT.tar.gz and OUT.tar.gz.sig
    edge install OUT.tar.gz --trust plant_key.pub         # or a key in <root>/trusted-keys/

The signature covers the archive's sha256 (and so every byte of it: the manifest, which lists
every file's sha256, and the files). Keys are ordinary ed25519 keys: OpenSSH
(`ssh-keygen -t ed25519`) or PEM (`openssl genpkey -algorithm ed25519`); the cryptography
package does the signing and checking.

The signature file is text:
    lineside-ad signature 1
    algorithm: ed25519
    key: SHA256:<base64 of the sha256 of the raw public key>
    archive-sha256: <hex>
    signature: <base64 of the 64-byte signature>
"""

import base64
import binascii
import hashlib
import os

from ..common.errors import EdgeError
from ..common.fsutil import atomic_write_text, read_limited, sha256_file

SIG_SUFFIX = ".sig"
HEADER = "lineside-ad signature 1"
CONTEXT = b"lineside-ad bundle archive\n"     # what is signed: CONTEXT + archive sha256 (hex)
TRUST_DIR = "trusted-keys"                     # under the install root: *.pub trusted by the box
MAX_KEY_BYTES = 64 << 10


def _crypto():
    try:
        from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise EdgeError("signed bundles need the cryptography package (pip install cryptography)") from None
    return serialization, ed25519, InvalidSignature, UnsupportedAlgorithm


def _read_key_file(path):
    data = read_limited(path, MAX_KEY_BYTES, "key")
    if not data.strip():
        raise EdgeError("not a key file (empty)", path)
    return data


def load_private_key(path):
    serialization, ed25519, _, unsupported = _crypto()
    data = _read_key_file(path)
    try:
        if b"OPENSSH PRIVATE KEY" in data:
            key = serialization.load_ssh_private_key(data, password=None)
        else:
            key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise EdgeError("the signing key is protected by a passphrase; use an unencrypted key "
                        "kept on the signing machine only", path) from None
    except (ValueError, unsupported) as exc:
        raise EdgeError(f"not a private key in OpenSSH or PEM form ({exc})", path) from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise EdgeError("the signing key must be an ed25519 key", path)
    return key


def load_public_key(path):
    serialization, ed25519, _, unsupported = _crypto()
    data = _read_key_file(path)
    try:
        if data.lstrip().startswith(b"ssh-"):
            key = serialization.load_ssh_public_key(data.strip().split(b"\n")[0])
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, unsupported) as exc:
        raise EdgeError(f"not a public key in OpenSSH or PEM form ({exc})", path) from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise EdgeError("a trusted key must be an ed25519 key", path)
    return key


def fingerprint(public_key):
    serialization = _crypto()[0]
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode("ascii").rstrip("=")


def sign_archive(archive, key_path, sig_path=None):
    """Write ARCHIVE.sig for `archive` with the ed25519 private key at key_path; returns its path."""
    key = load_private_key(key_path)
    digest = sha256_file(archive)
    signature = key.sign(CONTEXT + digest.encode("ascii"))
    sig_path = sig_path or archive + SIG_SUFFIX
    atomic_write_text(sig_path, "\n".join([
        HEADER, "algorithm: ed25519", f"key: {fingerprint(key.public_key())}",
        f"archive-sha256: {digest}", f"signature: {base64.b64encode(signature).decode('ascii')}", ""]))
    return sig_path


def _parse_signature(sig_path):
    try:
        with open(sig_path, "rb") as f:
            raw = f.read(4096)
        lines = raw.decode("ascii").splitlines()
    except FileNotFoundError:
        raise EdgeError("unsigned archive refused: this box trusts signing keys and there is no "
                        "signature", sig_path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgeError(f"cannot read the signature ({exc})", sig_path) from None
    if not lines or lines[0].strip() != HEADER:
        raise EdgeError(f"not a lineside-ad signature (first line must be '{HEADER}')", sig_path)
    fields = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            fields[k.strip()] = v.strip()
    if fields.get("algorithm") != "ed25519":
        raise EdgeError(f"signature algorithm must be ed25519, got {fields.get('algorithm')!r}", sig_path)
    try:
        signature = base64.b64decode(fields.get("signature", ""), validate=True)
    except (binascii.Error, ValueError):
        signature = b""
    if len(signature) != 64:
        raise EdgeError("signature is malformed (64 bytes of base64 expected)", sig_path)
    return fields, signature


def trusted_keys(root=None, extra=()):
    """[(path, public key)] from --trust files and <root>/trusted-keys/*.pub."""
    paths = list(extra or ())
    folder = os.path.join(root, TRUST_DIR) if root else None
    if folder and os.path.isdir(folder):
        paths += sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".pub"))
    return [(p, load_public_key(p)) for p in paths]


def verify_archive(archive, keys, sig_path=None):
    """Check ARCHIVE.sig against the trusted keys; returns the key file that signed it.
    EdgeError for a missing, malformed or wrong signature, or an archive changed after signing."""
    _, _, invalid, _ = _crypto()
    sig_path = sig_path or archive + SIG_SUFFIX
    fields, signature = _parse_signature(sig_path)
    digest = sha256_file(archive)
    if fields.get("archive-sha256") not in (None, digest):
        raise EdgeError("signature is for another archive (archive-sha256 differs): the archive "
                        "changed after signing, or the signature belongs to another one", sig_path)
    for path, key in keys:
        try:
            key.verify(signature, CONTEXT + digest.encode("ascii"))
            return path
        except invalid:
            continue
    names = ", ".join(os.path.basename(p) for p, _ in keys)
    raise EdgeError(f"signature does not verify with any trusted key ({names}); signed by "
                    f"{fields.get('key', 'an unknown key')}", sig_path)
