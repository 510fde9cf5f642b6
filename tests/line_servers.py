"""Real servers on loopback for the line-output tests, started and stopped by the tests:
a pymodbus TCP server acting as the PLC, an asyncua OPC UA server (also with a security policy
and certificates), Debian's mosquitto broker (also with a TLS listener) and a socat
pseudo-terminal pair. Each fixture skips with the reason when its piece is missing."""

import asyncio
import os
import shutil
import socket
import subprocess
import threading
import time

import pytest


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.02)
    return False


def wait_until(cond, timeout=5.0, step=0.01):
    """Poll `cond` until true or the timeout; returns its last value (bounded, never hangs)."""
    end = time.monotonic() + timeout
    while True:
        v = cond()
        if v or time.monotonic() > end:
            return v
        time.sleep(step)


# --- Modbus ---------------------------------------------------------------------------------
class ModbusPLC:
    """A pymodbus TCP server in its own thread and event loop, with `regs` holding registers
    and `coils` coils from address 0. `writes` logs every write request the PLC received:
    (monotonic time, function code, address, values). stop()/start() simulate a PLC that goes
    away and comes back on the same port."""

    def __init__(self, regs=200, coils=32):
        pytest.importorskip("pymodbus", reason="pymodbus is not installed")
        self.port = free_port()
        self.n_regs, self.n_coils = regs, coils
        self.writes = []
        self._thread = self._loop = self._server = None
        self.start()

    def _context(self):
        from pymodbus import datastore as ds
        dev_cls = getattr(ds, "ModbusDeviceContext", None) or getattr(ds, "ModbusSlaveContext")
        block = ds.ModbusSequentialDataBlock
        dev = dev_cls(co=block(1, [False] * self.n_coils), hr=block(1, [0] * self.n_regs))
        return ds.ModbusServerContext(dev, single=True)

    def _trace(self, sending, pdu):
        if not sending and pdu.function_code in (5, 6, 15, 16):
            vals = list(pdu.bits) if pdu.function_code in (5, 15) else list(pdu.registers)
            self.writes.append((time.monotonic(), pdu.function_code, pdu.address, vals))
        return pdu

    def start(self):
        from pymodbus.server import ModbusTcpServer
        ready = threading.Event()
        ctx = self._context()

        def run():
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)

            async def listen():      # the server must be built inside its running loop
                self._server = ModbusTcpServer(ctx, address=("127.0.0.1", self.port),
                                               trace_pdu=self._trace)
                await self._server.serve_forever(background=True)
            loop.run_until_complete(listen())
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="test-plc", daemon=True)
        self._thread.start()
        ready.wait(10)
        assert wait_port(self.port), "the Modbus test server did not start"

    def stop(self):
        if self._thread is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop)
        try:
            fut.result(5)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._thread = None

    def client(self):
        from pymodbus.client import ModbusTcpClient
        c = ModbusTcpClient("127.0.0.1", port=self.port, timeout=2)
        assert c.connect()
        return c

    def read_regs(self, addr, n):
        c = self.client()
        try:
            rr = c.read_holding_registers(addr, count=n)
            assert not rr.isError(), rr
            return list(rr.registers)
        finally:
            c.close()

    def read_coils(self, addr, n):
        c = self.client()
        try:
            rr = c.read_coils(addr, count=n)
            assert not rr.isError(), rr
            return [bool(b) for b in rr.bits[:n]]
        finally:
            c.close()

    def coil_writes(self, addr):
        """[(t, value)] for every write that set coil `addr`."""
        out = []
        for t, fc, a, vals in list(self.writes):
            if fc in (5, 15) and a <= addr < a + len(vals):
                out.append((t, bool(vals[addr - a])))
        return out


@pytest.fixture
def modbus_plc():
    plc = ModbusPLC()
    yield plc
    plc.stop()


# --- OPC UA ---------------------------------------------------------------------------------
OPCUA_VARS = {   # name -> (initial value, variant type name)
    "Ready": (False, "Boolean"), "Fault": (False, "Boolean"), "FaultCode": (0, "UInt16"),
    "StopLine": (False, "Boolean"), "RejectAll": (False, "Boolean"), "Reject": (False, "Boolean"),
    "Heartbeat": (0, "UInt32"), "LastSeq": (0, "UInt32"), "LastPartId": ("", "String"),
    "LastEncoder": (0, "UInt32"), "LastVerdict": (0, "UInt16"), "LastScore": (0.0, "Double"),
    "VerdictCount": (0, "UInt32"), "RejectCount": (0, "UInt32"),
}


OPCUA_USER = ("inspector", "s3cret-Pa55word!")


@pytest.fixture(scope="module")
def opcua_plc():
    """An asyncua server with the Inspector.* variables at ns=2 (as the docs list them)."""
    yield from _opcua_server()


@pytest.fixture(scope="module")
def opcua_secure_plc(tmp_path_factory):
    """The same variables behind Basic256Sha256 (Sign and SignAndEncrypt endpoints only, no
    unsecured one), the server's own certificate, and a user name + password (OPCUA_USER).
    `pki` holds: server (cert, key), box (cert, key) and other (a certificate of another server)."""
    pytest.importorskip("asyncua", reason="asyncua is not installed")
    pytest.importorskip("cryptography", reason="cryptography is not installed")
    from tests.tls_certs import opcua_app_cert
    d = tmp_path_factory.mktemp("opcua-pki")
    pki = {"server": opcua_app_cert(d, "plc", "urn:freeopcua:python:server"),
           "box": opcua_app_cert(d, "box", "urn:lineside:box"),
           "other": opcua_app_cert(d, "other-plc", "urn:freeopcua:python:server")}
    yield from _opcua_server(pki)


def _opcua_server(pki=None):
    pytest.importorskip("asyncua", reason="asyncua is not installed")
    from asyncua import ua
    from asyncua.sync import Server
    port = free_port()
    srv = Server()
    srv.set_endpoint(f"opc.tcp://127.0.0.1:{port}/plc/")
    if pki:
        from asyncua.crypto.permission_rules import User, UserRole
        srv.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
                                 ua.SecurityPolicyType.Basic256Sha256_Sign])
        srv.load_certificate(pki["server"][0])
        srv.load_private_key(pki["server"][1])
        srv.aio_obj.set_identity_tokens([ua.UserNameIdentityToken])
        srv.logins = []

        class Users:
            def get_user(self, iserver, username=None, password=None, certificate=None):
                ok = (username, password) == OPCUA_USER
                srv.logins.append((username, ok))
                return User(role=UserRole.User) if ok else None
        srv.aio_obj.iserver.set_user_manager(Users())
        srv.pki = pki
    idx = srv.register_namespace("urn:lineside:test-plc")
    obj = srv.nodes.objects.add_object(idx, "Inspector")
    nodes = {}
    for name, (val, vt) in OPCUA_VARS.items():
        v = obj.add_variable(f"ns={idx};s=Inspector.{name}", name, ua.Variant(val, getattr(ua.VariantType, vt)))
        v.set_writable()
        nodes[name] = v
    srv.start()
    srv.test_nodes = nodes
    srv.endpoint = f"opc.tcp://127.0.0.1:{port}/plc/"
    srv.ns = idx
    try:
        yield srv
    finally:
        srv.stop()


# --- MQTT -----------------------------------------------------------------------------------
@pytest.fixture
def mosquitto(tmp_path):
    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if not exe:
        pytest.skip("mosquitto is not installed (Debian package mosquitto)")
    pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is not installed")
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    p = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_port(port), "mosquitto did not start"
        yield port
    finally:
        stop_process(p)


MQTT_USER = ("box-7", "mqtt-Pa55word!")


@pytest.fixture
def mosquitto_tls(tmp_path):
    """mosquitto with only a TLS listener on loopback: a test CA signed its certificate, for the
    address 127.0.0.1 only (so `localhost` fails hostname verification); clients must show a
    certificate from the same CA and log in as MQTT_USER.
    Yields a namespace: port, ca, client (cert, key), other_ca (a CA that signed nothing here)."""
    import types
    from tests.tls_certs import CA
    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    pw_tool = shutil.which("mosquitto_passwd")
    if not exe or not pw_tool:
        pytest.skip("mosquitto is not installed (Debian package mosquitto)")
    pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is not installed")
    pytest.importorskip("cryptography", reason="cryptography is not installed")
    ca, other = CA(tmp_path, "plant CA"), CA(tmp_path, "other CA")
    server = ca.issue("broker", "broker", ips=("127.0.0.1",))
    client = ca.issue("box", "box-7", client=True)
    pw = tmp_path / "passwd"
    subprocess.run([pw_tool, "-c", "-b", str(pw), *MQTT_USER], check=True, capture_output=True)
    port = free_port()
    conf = tmp_path / "mosquitto-tls.conf"
    conf.write_text(f"user root\npersistence false\nallow_anonymous false\npassword_file {pw}\n"
                    f"listener {port} 127.0.0.1\ncafile {ca.path}\ncertfile {server[0]}\n"
                    f"keyfile {server[1]}\nrequire_certificate true\ntls_version tlsv1.2\n")
    log = open(tmp_path / "mosquitto.log", "wb")
    p = subprocess.Popen([exe, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        assert wait_port(port), "mosquitto (TLS) did not start: " + (tmp_path / "mosquitto.log").read_text()
        yield types.SimpleNamespace(port=port, ca=ca.path, client=client, other_ca=other.path)
    finally:
        stop_process(p)
        log.close()


class MqttWatcher:
    """A paho subscriber that collects (topic, payload, retain) on `topic`; `tls` (ca, cert,
    key) and `auth` (user, password) for the TLS broker."""

    def __init__(self, port, topic, tls=None, auth=None):
        import paho.mqtt.client as mqtt
        self.msgs = []
        self._c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        if tls:
            self._c.tls_set(ca_certs=tls[0], certfile=tls[1], keyfile=tls[2])
        if auth:
            self._c.username_pw_set(*auth)
        self._c.on_message = lambda c, u, m: self.msgs.append((m.topic, m.payload.decode(), m.retain))
        ok = threading.Event()
        self._c.on_subscribe = lambda *a: ok.set()
        self._c.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self._c.connect("127.0.0.1", port)
        self._c.loop_start()
        assert ok.wait(5), "test subscriber did not subscribe"

    def on(self, topic):
        return [(p, r) for t, p, r in list(self.msgs) if t == topic]

    def close(self):
        self._c.disconnect()
        self._c.loop_stop()


# --- serial -----------------------------------------------------------------------------------
@pytest.fixture
def pty_pair(tmp_path):
    """Two linked pseudo-terminals from socat: (box side, PLC side)."""
    exe = shutil.which("socat")
    if not exe:
        pytest.skip("socat is not installed (Debian package socat)")
    a, b = str(tmp_path / "box"), str(tmp_path / "plc")
    p = subprocess.Popen([exe, f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: os.path.exists(a) and os.path.exists(b), 5), "socat made no ptys"
        yield a, b
    finally:
        stop_process(p)


def stop_process(p, timeout=5):
    p.terminate()
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
