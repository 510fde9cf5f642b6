"""Certificates made in the tests with `cryptography` (which asyncua already needs): a small CA
that signs broker and client certificates for MQTT over TLS, and self-signed application
instance certificates for OPC UA (RSA 2048, as Basic256Sha256 wants)."""

import datetime
import ipaddress
import socket

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "lineside tests")])


def _write(folder, stem, cert, key):
    cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return str(cert_path), str(key_path)


def _builder(subject, issuer, pub):
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(pub)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2)))


def _san(dns=(), ips=(), uris=()):
    return x509.SubjectAlternativeName(
        [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        + [x509.UniformResourceIdentifier(u) for u in uris])


class CA:
    """A certificate authority writing `<stem>.pem` and `<stem>-key.pem` into `folder`."""

    def __init__(self, folder, cn="lineside test CA"):
        self.folder, self.key = folder, _key()
        self.name = _name(cn)
        self.cert = (_builder(self.name, self.name, self.key.public_key())
                     .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                     .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                    critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.path = _write(folder, cn.replace(" ", "-"), self.cert, self.key)[0]

    def issue(self, stem, cn, dns=(), ips=(), client=False):
        key = _key()
        eku = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        b = (_builder(_name(cn), self.name, key.public_key())
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage([eku]), critical=False))
        if dns or ips:
            b = b.add_extension(_san(dns, ips), critical=False)
        return _write(self.folder, stem, b.sign(self.key, hashes.SHA256()), key)


def opcua_app_cert(folder, stem, uri):
    """A self-signed OPC UA application instance certificate naming `uri` (and this host)."""
    key = _key()
    name = _name(stem)
    cert = (_builder(name, name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, True, True, True, False, False, False, False, False),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(_san(dns=(socket.gethostname(), "localhost"), ips=("127.0.0.1",), uris=(uri,)),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return _write(folder, stem, cert, key)
