"""Passwords and keys for the line outputs: read from a file, the environment or a systemd
credential, and never shown in the config's repr, its JSON, the records or an error message."""

import json
import logging
import sqlite3

import pytest

from edge.runtime.config import validate
from edge.common.errors import EdgeError
from edge.outputs import validate_line_config

PW = "Tr0ub4dor&3-plant"


def mqtt(**o):
    return {"timing": {"delay_ms": 1},
            "outputs": [dict({"type": "mqtt", "host": "broker.plant", "username": "box"}, **o)]}


def password_of(cfg):
    return cfg["outputs"][0]["password"]


def test_password_from_file_env_and_systemd_credential(tmp_path, monkeypatch):
    (tmp_path / "pw").write_text(PW + "\n")
    monkeypatch.setenv("LINESIDE_PW", PW)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text(PW)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    for key, value, origin in [("password_file", str(tmp_path / "pw"), f"file {tmp_path / 'pw'}"),
                               ("password_env", "LINESIDE_PW", "environment variable LINESIDE_PW"),
                               ("password_credential", "mqtt-password", "credential mqtt-password")]:
        c = validate_line_config(mqtt(**{key: value}))
        secret = password_of(c)
        assert secret.reveal() == PW and secret.origin == origin
        assert validate_line_config(c) == c                    # a validated config passes as is
        assert PW not in repr(c) and PW not in str(c) and PW not in json.dumps(c, default=str)


def test_plain_password_works_with_a_warning_and_is_not_shown(caplog):
    with caplog.at_level(logging.WARNING):
        c = validate_line_config(mqtt(password=PW))
    assert password_of(c).reveal() == PW
    text = caplog.text
    assert "line.outputs[0].password: the password is in the clear in the config file" in text
    assert "line.outputs[0]: the password is sent without transport security (set tls)" in text
    assert PW not in text and PW not in repr(c)


def test_secret_errors_name_the_key_and_never_the_value(tmp_path, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.delenv("NO_SUCH_VAR_X", raising=False)
    cases = [
        (mqtt(password=PW, password_env="X"), "line.outputs[0]: give only one of password, password_env"),
        (mqtt(password=12345678), "line.outputs[0].password: must be a non-empty string (got a int)"),
        (mqtt(password_env="NO_SUCH_VAR_X"), "line.outputs[0].password_env: environment variable NO_SUCH_VAR_X is not set"),
        (mqtt(password_file=str(tmp_path / "nope")), f"line.outputs[0].password_file: cannot read {tmp_path / 'nope'}: No such file"),
        (mqtt(password_credential="mqtt-password"), "line.outputs[0].password_credential: CREDENTIALS_DIRECTORY is not set"),
        (mqtt(password_credential="../etc/shadow"), "line.outputs[0].password_credential: must be a credential name"),
        (dict(mqtt(password_env="HOME"), outputs=[{"type": "mqtt", "host": "h", "password_env": "HOME"}]),
         "line.outputs[0].username: a password needs a username"),
        (mqtt(tls={"ca_file": str(tmp_path / "ca.pem")}), f"line.outputs[0].tls.ca_file: cannot read {tmp_path / 'ca.pem'}"),
        (mqtt(tls={}), "line.outputs[0].tls.ca_file: is required"),
        (mqtt(tls={"ca_file": __file__, "cert_file": __file__}),
         "line.outputs[0].tls: a client certificate needs both cert_file and key_file"),
        ({"timing": {"delay_ms": 1}, "outputs": [{"type": "opcua", "endpoint": "opc.tcp://plc:4840/",
                                                  "security": {"mode": "None"}}]},
         "line.outputs[0].security.mode: must be one of Sign, SignAndEncrypt, got 'None'"),
        ({"timing": {"delay_ms": 1}, "outputs": [{"type": "opcua", "endpoint": "opc.tcp://plc:4840/",
                                                  "security": {"certificate_file": __file__}}]},
         "line.outputs[0].security.private_key_file: is required"),
    ]
    for cfg, message in cases:
        with pytest.raises(EdgeError) as e:
            validate_line_config(cfg)
        assert str(e.value).startswith(message), (str(e.value), message)
        assert "12345678" not in str(e.value) and PW not in str(e.value)


def test_relative_files_are_taken_from_the_config_folder_and_the_records_hold_no_password(tmp_path, monkeypatch):
    from edge.records.store import RecordStore
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki" / "ca.pem").write_text("x")
    monkeypatch.setenv("LINESIDE_PW", PW)
    raw = {"bundle": "b", "source": "folder", "line": mqtt(password_env="LINESIDE_PW", tls={"ca_file": "pki/ca.pem"})}
    cfg = validate(raw, str(tmp_path))
    o = cfg.line["outputs"][0]
    assert o["tls"]["ca_file"] == str(tmp_path / "pki" / "ca.pem") and o["port"] == 8883
    store = RecordStore(str(tmp_path / "records.db"), str(tmp_path / "images"))
    store.start_run("b", cfg.to_dict())
    store.close()
    con = sqlite3.connect(tmp_path / "records.db")
    (stored,) = con.execute("SELECT config FROM runs").fetchone()
    con.close()
    assert "environment variable LINESIDE_PW" in stored and PW not in stored
