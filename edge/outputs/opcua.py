"""OPC UA (asyncua's sync client): the Modbus map's information as variables on the PLC's
OPC UA server, each node id = node_prefix + name (names in docs/line-io.md). The variables'
data types are read once per connection and every write uses them.

With `security:` the box signs (Sign) or signs and encrypts (SignAndEncrypt) with its own
certificate and key, and trusts exactly one server certificate, the configured file: before
each connection the server's certificate from its endpoint list is compared with it and a
different one is refused; the secure channel itself is then built on the configured
certificate, so a server without the matching private key cannot take part."""

import hashlib
import threading

from ..common.errors import EdgeError
from .base import FAULT_CODES, QueuedOutput

NODES = ("Ready", "Fault", "FaultCode", "StopLine", "RejectAll", "Reject", "Heartbeat",
         "LastSeq", "LastPartId", "LastEncoder", "LastVerdict", "LastScore", "VerdictCount",
         "RejectCount")


class OpcuaOutput(QueuedOutput):
    kind = "OPC UA server"
    gap_kind = "plc_gap"

    def __init__(self, cfg, where, emit, reconnect):
        super().__init__(cfg, where, emit, reconnect)
        self.address = cfg["endpoint"]
        self._lock = threading.Lock()
        self.values = {"Ready": False, "Fault": False, "FaultCode": 0, "StopLine": False,
                       "RejectAll": False, "Reject": False, "Heartbeat": 0, "LastSeq": 0,
                       "LastPartId": "", "LastEncoder": 0, "LastVerdict": 0, "LastScore": 0.0,
                       "VerdictCount": 0, "RejectCount": 0}
        self._client = None

    def _connect(self):
        try:
            from asyncua import ua
            from asyncua.sync import Client
        except ImportError as e:
            raise EdgeError(f"OPC UA needs asyncua: {e}", self.where) from None
        self._ua = ua
        c = self.cfg
        cl = Client(c["endpoint"], timeout=c["timeout_ms"] / 1000)
        try:
            if c["security"]:
                self._secure(cl, c["security"])
            if c["username"]:
                cl.set_user(c["username"])
            if c["password"]:
                cl.set_password(c["password"].reveal())
            cl.connect()
        except BaseException:
            cl.tloop.stop()
            raise
        self._client = cl
        self.nodes, self.types = {}, {}
        for name in NODES:
            nid = self.cfg["node_prefix"] + name
            try:
                node = cl.get_node(nid)
                self.types[name] = node.read_data_type_as_variant_type()
            except Exception as e:
                self._disconnect()
                raise EdgeError(f"the OPC UA server at {self.address} has no usable variable {nid}"
                                f" ({type(e).__name__}: {e})", f"{self.where}.node_prefix") from None
            self.nodes[name] = node

    def _secure(self, cl, sec):
        from asyncua.crypto import security_policies as sp
        w = f"{self.where}.security"
        own = _load_cert(sec["certificate_file"], f"{w}.certificate_file")
        key = _load_key(sec["private_key_file"], own, f"{w}.private_key_file")
        trusted = _load_cert(sec["server_certificate_file"], f"{w}.server_certificate_file")
        uris = _san_uris(own)
        if uris:                       # servers check the application URI against the certificate
            cl.application_uri = uris[0]
        mode = getattr(self._ua.MessageSecurityMode, sec["mode"])
        policy = getattr(sp, "SecurityPolicy" + sec["policy"])
        offered = []
        for ep in cl.connect_and_get_server_endpoints():
            offered.append(f"{ep.SecurityPolicyUri.rsplit('#', 1)[-1]}/{ep.SecurityMode.name}")
            if ep.SecurityPolicyUri == policy.URI and ep.SecurityMode == mode:
                break
        else:
            raise EdgeError(f"the OPC UA server at {self.address} offers no {sec['policy']} {sec['mode']}"
                            f" endpoint (it offers: {', '.join(offered) or 'none'})", w)
        presented = _first_der(ep.ServerCertificate)
        if presented != trusted:
            raise EdgeError(f"refused the OPC UA server at {self.address}: it presents certificate "
                            f"SHA-256 {_fp(presented)}, not the trusted one in "
                            f"{sec['server_certificate_file']} (SHA-256 {_fp(trusted)})",
                            f"{w}.server_certificate_file")
        # DER bytes, not paths: asyncua guesses PEM or DER from a file's extension, and a
        # systemd credential or a .crt file has none it knows
        cl.set_security(policy, own, key, server_certificate=trusted, mode=mode)

    def _disconnect(self):
        if self._client is not None:
            cl, self._client = self._client, None
            try:
                cl.disconnect()
            except Exception:
                cl.tloop.stop()

    def _convert(self, name, v):
        vt = self.types[name]
        if vt == self._ua.VariantType.Boolean:
            v = bool(v)
        elif vt in (self._ua.VariantType.Float, self._ua.VariantType.Double):
            v = float(v)
        elif vt == self._ua.VariantType.String:
            v = "" if v is None else str(v)
        else:
            v = int(v or 0)
        return self._ua.DataValue(self._ua.Variant(v, vt))

    def _do(self, op, names):
        with self._lock:
            vals = [self._convert(n, self.values[n]) for n in names]
        self._client.write_values([self.nodes[n] for n in names], vals)

    def _resync(self):
        self._do("write", NODES)

    def _set(self, **kv):
        with self._lock:
            self.values.update(kv)
        self.submit("write", tuple(kv))

    def pulse(self, on, seq):
        self._set(Reject=bool(on))

    def heartbeat(self, n):
        self._set(Heartbeat=n)

    def verdict(self, v):
        with self._lock:
            count = self.values["VerdictCount"] + 1
            rcount = self.values["RejectCount"] + (1 if v["reject"] else 0)
        self._set(LastSeq=v["seq"], LastPartId="" if v["part_id"] is None else str(v["part_id"]),
                  LastEncoder=v["encoder"] or 0, LastVerdict=v["code"], LastScore=v["score"] or 0.0,
                  RejectCount=rcount, VerdictCount=count)

    def status(self, s):
        self._set(Ready=s["ready"], Fault=s["fault"], FaultCode=FAULT_CODES.get(s["fault_kind"], 9),
                  StopLine=s["stop_line"], RejectAll=s["reject_all"])


# --- certificates (cryptography comes with asyncua) ------------------------------------------
def _load_cert(path, where):
    """The DER bytes of the certificate in `path` (PEM or DER)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    with open(path, "rb") as f:
        data = f.read()
    try:
        cert = (x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data
                else x509.load_der_x509_certificate(data))
    except ValueError as e:
        raise EdgeError(f"{path} is not an X.509 certificate (PEM or DER): {e}", where) from None
    return cert.public_bytes(Encoding.DER)


def _load_key(path, cert_der, where):
    """The private key in `path` (PEM or DER, unencrypted) as DER bytes, checked against the
    certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization as ser
    with open(path, "rb") as f:
        data = f.read()
    try:
        key = (ser.load_pem_private_key(data, None) if b"-----BEGIN" in data
               else ser.load_der_private_key(data, None))
    except (ValueError, TypeError) as e:     # TypeError: the key is encrypted
        raise EdgeError(f"{path} is not an unencrypted private key (PEM or DER): {e}", where) from None
    pub = x509.load_der_x509_certificate(cert_der).public_key()
    fmt = (ser.Encoding.DER, ser.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*fmt) != pub.public_bytes(*fmt):
        raise EdgeError(f"{path} is not the private key of the box's certificate", where)
    return key.private_bytes(ser.Encoding.DER, ser.PrivateFormat.PKCS8, ser.NoEncryption())


def _san_uris(cert_der):
    from cryptography import x509
    try:
        san = x509.load_der_x509_certificate(cert_der).extensions.get_extension_for_class(
            x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return san.value.get_values_for_type(x509.UniformResourceIdentifier)


def _first_der(blob):
    """The first certificate of a DER chain (servers may send several back to back)."""
    blob = bytes(blob or b"")
    if len(blob) < 2 or blob[0] != 0x30:
        return blob
    n = blob[1]
    if n < 0x80:
        return blob[:2 + n]
    k = n & 0x7F
    return blob[:2 + k + int.from_bytes(blob[2:2 + k], "big")]


def _fp(der):
    h = hashlib.sha256(der).hexdigest()
    return ":".join(h[i:i + 2] for i in range(0, 16, 2)) + "..."
