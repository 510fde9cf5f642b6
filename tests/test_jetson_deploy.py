"""The Jetson deployment files against the one JetPack table (deploy/jetpack.py) and the rules
a Jetson imposes: pins per CUDA major, the GStreamer plugins the sources use, a systemd unit
that leaves the Argus socket visible, and containers that keep the device groups."""

import configparser
import importlib.util
import os
import re
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(REPO, "deploy")
NV_TEGRA_LINE = ("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, "
                 "DATE: Wed Jan  8 01:49:37 UTC 2025")


@pytest.fixture(scope="module")
def jp():
    spec = importlib.util.spec_from_file_location("jetpack", os.path.join(DEPLOY, "jetpack.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def read(*parts):
    with open(os.path.join(REPO, *parts)) as f:
        return f.read()


# ---- the table ------------------------------------------------------------------------------
def test_table_covers_the_supported_releases(jp):
    supported = {r["jetpack"] for r in jp.RELEASES if r["supported"]}
    assert {"6.1", "6.2", "7.x"} <= supported and "6.0" not in supported
    for r in jp.RELEASES:
        for key in ("l4t", "python", "cuda", "tensorrt", "numpy", "opencv"):
            assert r[key], (r["jetpack"], key)
        # every supported row has a TensorRT the engine accepts and pins for its CUDA major
        if r["supported"]:
            assert tuple(int(x) for x in r["tensorrt"].split(".")[:2]) >= (10, 3)
            assert any(p.startswith("cuda-python") for p in jp.pins_for(r))
    assert jp.pins_for(jp.release_for("36.4.3"))[0] == "cuda-python>=12.6.1,<13"


@pytest.mark.parametrize("l4t,jetpack", [("36.4.0", "6.1"), ("r36.4.0", "6.1"), ("36.4.3", "6.2"),
                                         ("36.4.4", "6.2"), ("38.2", "7.x"), ("38.4.0", "7.x")])
def test_l4t_release_to_jetpack(jp, l4t, jetpack):
    assert jp.release_for(l4t)["jetpack"] == jetpack


def test_unsupported_releases_refused(jp):
    with pytest.raises(jp.JetpackError, match=r"JetPack 6\.0 .* not supported: TensorRT 8\.6"):
        jp.release_for("36.3.0")
    with pytest.raises(jp.JetpackError, match="L4T 35.5.0 is not a JetPack release"):
        jp.release_for("35.5.0")
    assert jp.l4t_from_text(NV_TEGRA_LINE) == "36.4.3"


def test_pins_command(tmp_path):
    script = os.path.join(DEPLOY, "jetpack.py")
    out = subprocess.run([sys.executable, script, "pins", "--l4t", "r36.4.0"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.split() == ["cuda-python>=12.6.1,<13", "numpy<2"]
    out = subprocess.run([sys.executable, script, "pins", "--l4t", "36.3.0"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "JetPack 6.0" in out.stderr and not out.stdout


# ---- the pins, in one place -------------------------------------------------------------------
def test_setup_cfg_jetson_extras_match_the_table(jp):
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(REPO, "setup.cfg"))
    extras = {k: v.split() for k, v in cfg["options.extras_require"].items()}
    families = {}
    for r in jp.RELEASES:
        if r["supported"]:
            families.setdefault(r["jetpack"].split(".")[0], jp.pins_for(r))
    for major, pins in families.items():
        assert extras[f"jetson{major}"] == pins, major
    # cuda-python appears nowhere else unpinned
    for name, reqs in extras.items():
        for req in reqs:
            if req.startswith("cuda-python"):
                assert name.startswith("jetson"), (name, req)


def _pip_lines(text):
    """The pip install commands of a shell script or Dockerfile (continuations joined)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [cmd for line in joined.splitlines() if not line.lstrip().startswith("#")
            for cmd in re.split(r"&&|;|\|\|", line) if "pip install" in cmd]


@pytest.mark.parametrize("path", [("deploy", "install.sh"), ("deploy", "docker", "Dockerfile")])
def test_install_and_docker_take_pins_from_the_table(path):
    text = read(*path)
    lines = _pip_lines(text)
    assert lines
    for line in lines:
        # no CUDA binding or numpy named by hand: they come from jetpack.py
        assert not re.search(r"cuda-python|pycuda|\bnumpy\b", line), line
    assert re.search(r"jetpack\.py\"? pins", text)
    assert any("pins" in line for line in lines)


def test_docker_default_l4t_is_supported(jp):
    text = read("deploy", "docker", "Dockerfile")
    tag = re.search(r"^ARG L4T_TAG=(\S+)", text, re.M).group(1)
    assert jp.release_for(tag)["supported"]
    # the tag is re-declared after FROM, or RUN would see it empty
    after_from = text.split("\nFROM ", 1)[1]
    assert re.search(r"^ARG L4T_TAG\s*$", after_from, re.M)


# ---- packages the sources need ---------------------------------------------------------------
def _apt_packages(text):
    return set(re.findall(r"\b(gstreamer1\.0-[a-z0-9-]+|python3-[a-z0-9-]+|libopencv-python)\b", text))


def test_gstreamer_plugins_the_sources_use_are_installed():
    from edge.sources.gst import PACKAGES

    needed = {m.group(1) for where in PACKAGES.values()
              for m in [re.match(r"Debian (gstreamer1\.0-\S+)", where)] if m}
    assert "gstreamer1.0-plugins-bad" in needed          # jpegparse (MJPEG cameras), bayer2rgb
    for path in (("deploy", "install.sh"), ("deploy", "docker", "Dockerfile")):
        missing = needed - _apt_packages(read(*path))
        assert not missing, (path, missing)


# ---- systemd ----------------------------------------------------------------------------------
def _unit(name):
    """{key: [values]} of a unit file (comments dropped; later keys appended)."""
    out = {}
    for line in read("deploy", "systemd", name).splitlines():
        line = line.strip()
        if not line or line[0] in "#;[" or "=" not in line:
            continue
        key, value = line.split("=", 1)
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def _yes(values):
    return bool(values) and values[-1].lower() in ("yes", "true", "1", "on")


def test_edge_unit_keeps_argus_socket_and_devices_visible():
    unit = _unit("lineside-edge.service")
    # nvarguscamerasrc talks to nvargus-daemon through /tmp/argus_socket
    if _yes(unit.get("PrivateTmp")):
        binds = " ".join(unit.get("BindPaths", []) + unit.get("BindReadOnlyPaths", []))
        assert "/tmp/argus_socket" in binds, "PrivateTmp=yes hides /tmp/argus_socket"
    for key in ("PrivateDevices", "ProtectKernelTunables", "PrivateNetwork"):
        assert not _yes(unit.get(key)), key
    assert unit.get("DevicePolicy", ["auto"])[-1] == "auto"
    assert any("nvargus-daemon.service" in v for v in unit["After"])
    # the service's build takes the extra options (--dla N) as separate words
    pre = shlex.split(unit["ExecStartPre"][-1])
    assert pre[1:3] == ["build", "${LINESIDE_ROOT}/current"] and pre[-1] == "$EDGE_BUILD_ARGS"


def test_clocks_unit_after_nvpmodel_and_before_the_inspector():
    unit = _unit("jetson-clocks.service")
    after = " ".join(unit.get("After", [])).split()
    assert "nvpmodel.service" in after
    assert "lineside-edge.service" in " ".join(unit.get("Before", [])).split()
    assert not any("nvpmodel" in v for v in unit.get("Requires", []) + unit.get("Wants", []))


def test_container_keeps_the_device_groups():
    text = read("deploy", "docker", "Dockerfile")
    run = re.sub(r"\\\n#\s*", " ", text)
    cmd = next(line for line in run.splitlines() if "docker run" in line)
    # --user UID:GID drops the image's supplementary groups: video must be added by number
    user = re.search(r'--user\s+("[^"]*"|\S+)', cmd)
    assert user, cmd
    if ":" in user.group(1):
        assert re.search(r'--group-add "\$\(getent group video \| cut -d: -f3\)"', cmd), cmd
