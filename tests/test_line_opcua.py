"""OPC UA against a real asyncua server on loopback holding the Inspector.* variables."""

import time

import pytest

from edge.common.errors import EdgeError
from edge.outputs import LineIO
from edge.runtime.types import Decision

from tests.line_servers import OPCUA_USER, opcua_plc, opcua_secure_plc, wait_until  # noqa: F401 (fixtures)


def cfg(endpoint, **over):
    return {"timing": {"delay_ms": 30, "pulse_ms": 5}, "heartbeat_ms": 50,
            "failsafe": {"on_fault": "stop_line"},
            "outputs": [dict({"type": "opcua", "endpoint": endpoint}, **over)]}


def test_variables_on_the_server(opcua_plc):
    n = opcua_plc.test_nodes
    io = LineIO(cfg(opcua_plc.endpoint)).start()
    assert wait_until(lambda: n["Heartbeat"].read_value() >= 2, 5)
    assert n["Ready"].read_value() is True and n["Fault"].read_value() is False
    t0 = time.monotonic()
    io.expect(11, t0, encoder=777, part_id="XJ-11")
    io.decide(Decision(11, t0, time.time(), 0.625, True, "score", encoder=777, part_id="XJ-11"))
    assert wait_until(lambda: n["VerdictCount"].read_value() == 1, 5)
    assert (n["LastSeq"].read_value(), n["LastPartId"].read_value(), n["LastEncoder"].read_value(),
            n["LastVerdict"].read_value(), n["LastScore"].read_value()) == (11, "XJ-11", 777, 2, 0.625)
    assert wait_until(lambda: io.stats()["pulses"] == 1, 2)
    io.fault("queue", "frame queue overflow")
    assert wait_until(lambda: n["Fault"].read_value(), 5)
    assert (n["Ready"].read_value(), n["StopLine"].read_value(), n["FaultCode"].read_value()) == (False, True, 3)
    hb = n["Heartbeat"].read_value()
    time.sleep(0.25)
    assert n["Heartbeat"].read_value() == hb
    io.close()
    assert n["Reject"].read_value() is False and n["RejectCount"].read_value() == 1


def test_missing_variable_or_server_is_an_error_at_start(opcua_plc):
    with pytest.raises(EdgeError, match=r"line.outputs\[0\].node_prefix: .* no usable variable ns=2;s=Box.Ready"):
        LineIO(cfg(opcua_plc.endpoint, node_prefix="ns=2;s=Box.")).start()
    with pytest.raises(EdgeError, match=r"line.outputs\[0\]: cannot reach OPC UA server at opc.tcp://127.0.0.1:9/"):
        LineIO(cfg("opc.tcp://127.0.0.1:9/", timeout_ms=500)).start()


# --- security: Basic256Sha256, the box's certificate, the server's certificate trusted explicitly --
def secure_cfg(plc, tmp_path, mode="SignAndEncrypt", trusted="server"):
    pw = tmp_path / "opcua.pass"
    pw.write_text(OPCUA_USER[1] + "\n")
    pki = plc.pki
    return cfg(plc.endpoint, username=OPCUA_USER[0], password_file=str(pw),
               security={"policy": "Basic256Sha256", "mode": mode, "certificate_file": pki["box"][0],
                         "private_key_file": pki["box"][1], "server_certificate_file": pki[trusted][0]})


def as_systemd_credentials(c, tmp_path, monkeypatch):
    """The same configuration with the key and the password as systemd credentials (files
    without an extension) and the server certificate in DER as a .crt file."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    creds = tmp_path / "credentials"
    creds.mkdir()
    o = c["outputs"][0]
    sec = o["security"]
    (creds / "opcua-key").write_bytes(open(sec.pop("private_key_file"), "rb").read())
    (creds / "opcua-password").write_text(OPCUA_USER[1])
    der = x509.load_pem_x509_certificate(open(sec["server_certificate_file"], "rb").read()).public_bytes(Encoding.DER)
    (tmp_path / "plc.crt").write_bytes(der)
    sec.update(private_key_credential="opcua-key", server_certificate_file=str(tmp_path / "plc.crt"))
    del o["password_file"]
    o["password_credential"] = "opcua-password"
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    return c


@pytest.mark.parametrize("mode", ["Sign", "SignAndEncrypt"])
def test_secure_channel_delivers_rejects(opcua_secure_plc, tmp_path, mode, monkeypatch):
    n = opcua_secure_plc.test_nodes
    seq = 21 if mode == "Sign" else 22                  # the server is shared by both runs
    c = secure_cfg(opcua_secure_plc, tmp_path, mode)
    if mode == "SignAndEncrypt":
        c = as_systemd_credentials(c, tmp_path, monkeypatch)
    io = LineIO(c).start()
    try:
        t0 = time.monotonic()
        io.expect(seq, t0, part_id=f"S-{seq}")
        io.decide(Decision(seq, t0, time.time(), 0.75, True, "score", part_id=f"S-{seq}"))
        assert wait_until(lambda: n["LastSeq"].read_value() == seq, 5)
        assert (n["LastPartId"].read_value(), n["LastVerdict"].read_value(), n["RejectCount"].read_value()) \
            == (f"S-{seq}", 2, 1)
        assert OPCUA_USER[1] not in repr(io.cfg) + str(io.stats())
    finally:
        io.close()
    assert (OPCUA_USER[0], True) in opcua_secure_plc.logins


def test_server_with_another_certificate_is_refused(opcua_secure_plc, tmp_path):
    pki = opcua_secure_plc.pki
    with pytest.raises(EdgeError) as e:
        LineIO(secure_cfg(opcua_secure_plc, tmp_path, trusted="other")).start()
    msg = str(e.value)
    assert msg.startswith(f"line.outputs[0].security.server_certificate_file: refused the OPC UA server at "
                          f"{opcua_secure_plc.endpoint}: it presents certificate SHA-256 ")
    assert msg.endswith(f"not the trusted one in {pki['other'][0]} (SHA-256 {msg.rsplit('SHA-256 ', 1)[1]}")
    assert "\n" not in msg and OPCUA_USER[1] not in msg


def test_unsecured_client_and_wrong_password_are_turned_away(opcua_secure_plc, tmp_path):
    # the server offers no unsecured endpoint: a box without `security:` does not get in
    with pytest.raises(EdgeError, match=r"^line.outputs\[0\]: cannot reach OPC UA server at "):
        LineIO(cfg(opcua_secure_plc.endpoint, timeout_ms=1000)).start()
    bad = secure_cfg(opcua_secure_plc, tmp_path)
    (tmp_path / "opcua.pass").write_text("not-the-Pa55word\n")
    with pytest.raises(EdgeError) as e:
        LineIO(bad).start()
    assert "not-the-Pa55word" not in str(e.value) and "\n" not in str(e.value)
