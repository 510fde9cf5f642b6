"""Passwords and key files for the line outputs, read from a file, the environment or a systemd
credential, and never shown: a Secret's repr, str and JSON form name where it came from, not
what it is. Only the output that sends it calls reveal().

    password: "..."                    # in the clear in the config file: works, with a warning
    password_file: /etc/lineside/mqtt.pass
    password_env: LINESIDE_MQTT_PASSWORD
    password_credential: mqtt-password # $CREDENTIALS_DIRECTORY/mqtt-password (LoadCredential=)
"""

import logging
import os

from ..common.errors import EdgeError

log = logging.getLogger(__name__)

SUFFIXES = ("", "_file", "_env", "_credential")


class Secret:
    """A value that is never printed. Compare with reveal(), not with ==."""
    __slots__ = ("_value", "origin")

    def __init__(self, value, origin):
        self._value, self.origin = value, origin

    def reveal(self):
        return self._value

    def __repr__(self):
        return f"<secret from {self.origin}>"

    __str__ = __repr__

    def __reduce__(self):              # no pickling a password into a queue or a file
        raise TypeError("a Secret is not pickled")


def credential_path(name, where):
    """The file of systemd credential `name` ($CREDENTIALS_DIRECTORY, set by LoadCredential=)."""
    if not name or "/" in name or name in (".", ".."):
        raise EdgeError(f"must be a credential name (no '/'), got {name!r}", where)
    d = os.environ.get("CREDENTIALS_DIRECTORY")
    if not d:
        raise EdgeError("CREDENTIALS_DIRECTORY is not set: the systemd unit needs "
                        f"LoadCredential={name}:<file> (or give a *_file path instead)", where)
    return os.path.join(d, name)


def _read(path, where):
    try:
        with open(path, "rb") as f:
            data = f.read(65537)
    except OSError as e:
        raise EdgeError(f"cannot read {path}: {e.strerror or e}", where) from None
    if len(data) > 65536:
        raise EdgeError(f"{path} is larger than 64 KiB: not a password", where)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise EdgeError(f"{path} is not UTF-8 text", where) from None
    return text.rstrip("\r\n")


def read_secret(d, key, where):
    """`key` from one of key, key_file, key_env, key_credential in mapping `d`: a Secret, or
    None when none is given. A Secret passes through unchanged (a validated config)."""
    given = [key + s for s in SUFFIXES if d.get(key + s) is not None]
    if not given:
        return None
    if len(given) > 1:
        raise EdgeError(f"give only one of {', '.join(given)}", where)
    k = given[0]
    v = d[k]
    path = f"{where}.{k}"
    if isinstance(v, Secret):
        return v
    if not isinstance(v, str) or not v:
        # never echo the value: it may be the password itself
        raise EdgeError(f"must be a non-empty string (got a {type(v).__name__})", path)
    if k == key:
        log.warning("%s: the password is in the clear in the config file; use %s_file, %s_env or "
                    "%s_credential (docs/line-io.md, security)", path, key, key, key)
        return Secret(v, "the config file (in the clear)")
    if k.endswith("_env"):
        if v not in os.environ:
            raise EdgeError(f"environment variable {v} is not set", path)
        value, origin = os.environ[v], f"environment variable {v}"
    elif k.endswith("_file"):
        value, origin = _read(v, path), f"file {v}"
    else:
        value, origin = _read(credential_path(v, path), path), f"credential {v}"
    if not value:
        raise EdgeError(f"the {origin} is empty", path)
    return Secret(value, origin)


def read_path(d, key, where, base_dir=None, required=False):
    """A file the output reads at start (a certificate, a CA, a private key): key_file (a path)
    or, for private keys, key_credential (a systemd credential name). Returns the absolute path
    after checking that it can be read, or None."""
    fk, ck = key + "_file", key + "_credential"
    given = [k for k in (fk, ck) if d.get(k) is not None]
    if not given:
        if required:
            raise EdgeError("is required", f"{where}.{fk}")
        return None
    if len(given) > 1:
        raise EdgeError(f"give only one of {', '.join(given)}", where)
    k = given[0]
    v, path = d[k], f"{where}.{k}"
    if not isinstance(v, str) or not v:
        raise EdgeError(f"must be a non-empty string, got {v!r}", path)
    if k == ck:
        v = credential_path(v, path)
    elif base_dir and not os.path.isabs(v):
        v = os.path.normpath(os.path.join(base_dir, v))
    try:
        with open(v, "rb"):
            pass
    except OSError as e:
        raise EdgeError(f"cannot read {v}: {e.strerror or e}", path) from None
    return os.path.abspath(v)
