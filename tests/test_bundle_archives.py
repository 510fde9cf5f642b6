"""Archives and installs that must be refused with nothing changed: unsigned or wrongly signed
archives on a box that trusts a key, members the manifest does not list, archives that unpack
past the stated limit, bundle folders holding links; and install/pack arguments that are not
what they must be."""

import io
import os
import shutil
import subprocess
import tarfile

import pytest
import yaml

from edge.bundle import install
from edge.common.errors import EdgeError
from tests.graphs import make_bundle
from tests.test_deploy import bundle_members, edge_cmd, raw_tar, snapshot

QUIET = dict(log=lambda *_: None)


@pytest.fixture(scope="module")
def srcs(tmp_path_factory):
    base = tmp_path_factory.mktemp("bundles")
    return [make_bundle(str(base / f"b{i}"), seed=10 + i) for i in range(2)]


@pytest.fixture
def root(tmp_path):
    return str(tmp_path / "root")


def ed25519_pair(folder, name):
    """(private key path, public key path), OpenSSH form, made with the cryptography package."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    priv, pub = os.path.join(folder, name), os.path.join(folder, name + ".pub")
    with open(priv, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                  serialization.NoEncryption()))
    with open(pub, "wb") as f:
        f.write(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                              serialization.PublicFormat.OpenSSH) + b" plant\n")
    return priv, pub


# ---- signed archives ----------------------------------------------------------------------------
def test_signed_archive_installs_and_unsigned_or_wrong_ones_do_not(srcs, root, tmp_path):
    plant_key, plant_pub = ed25519_pair(str(tmp_path), "plant")
    other_key, _ = ed25519_pair(str(tmp_path), "other")
    good = str(tmp_path / "good.tar.gz")
    assert edge_cmd("pack", srcs[0], good, "--sign", plant_key) == 0
    assert open(good + ".sig").readline().strip() == "lineside-ad signature 1"
    res = install.install(good, root, activate=True, trust=[plant_pub], **QUIET)
    assert res.activated
    before = snapshot(root)

    unsigned = str(tmp_path / "unsigned.tar.gz")
    install.pack(srcs[1], unsigned)
    with pytest.raises(EdgeError, match="unsigned archive refused"):
        install.install(unsigned, root, activate=True, trust=[plant_pub], **QUIET)
    wrong = str(tmp_path / "wrong.tar.gz")
    assert edge_cmd("pack", srcs[1], wrong, "--sign", other_key) == 0
    with pytest.raises(EdgeError, match="does not verify with any trusted key"):
        install.install(wrong, root, activate=True, trust=[plant_pub], **QUIET)
    # A signature taken from another archive, or an archive changed after signing.
    swapped = str(tmp_path / "swapped.tar.gz")
    shutil.copy(unsigned, swapped)
    shutil.copy(good + ".sig", swapped + ".sig")
    with pytest.raises(EdgeError, match="another archive"):
        install.install(swapped, root, activate=True, trust=[plant_pub], **QUIET)
    with open(swapped + ".sig") as f:
        lines = [line for line in f if not line.startswith("archive-sha256")]
    with open(swapped + ".sig", "w") as f:
        f.writelines(lines)
    with pytest.raises(EdgeError, match="does not verify"):
        install.install(swapped, root, activate=True, trust=[plant_pub], **QUIET)
    with open(swapped + ".sig", "w") as f:
        f.write("lineside-ad signature 1\nalgorithm: ed25519\nsignature: AAAA\n")
    with pytest.raises(EdgeError, match="malformed"):
        install.install(swapped, root, activate=True, trust=[plant_pub], **QUIET)
    assert edge_cmd("install", wrong, "--root", root, "--trust", plant_pub) == 2
    assert snapshot(root) == before


def test_trusted_keys_under_the_root_bind_every_install(srcs, root, tmp_path):
    plant_key, plant_pub = ed25519_pair(str(tmp_path), "plant")
    os.makedirs(os.path.join(root, "trusted-keys"))
    shutil.copy(plant_pub, os.path.join(root, "trusted-keys", "plant.pub"))
    before = snapshot(root)
    with pytest.raises(EdgeError, match="signed archives only"):
        install.install(srcs[0], root, **QUIET)            # a folder is never signed
    unsigned = str(tmp_path / "u.tar.gz")
    install.pack(srcs[0], unsigned)
    with pytest.raises(EdgeError, match="unsigned archive refused"):
        install.install(unsigned, root, **QUIET)
    assert snapshot(root) == before
    signed = str(tmp_path / "s.tar.gz")
    install.pack(srcs[0], signed)
    sig = str(tmp_path / "elsewhere.sig")
    from edge.bundle.signing import sign_archive
    sign_archive(signed, plant_key, sig)
    assert install.install(signed, root, signature=sig, **QUIET).name


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")
def test_keys_made_by_ssh_keygen_work(srcs, root, tmp_path):
    key = str(tmp_path / "id_plant")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "plant", "-f", key], check=True)
    archive = str(tmp_path / "b.tgz")
    assert edge_cmd("pack", srcs[1], archive, "--sign", key) == 0
    assert install.install(archive, root, trust=[key + ".pub"], **QUIET).name
    rsa = str(tmp_path / "id_rsa")
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", rsa], check=True)
    with pytest.raises(EdgeError, match="ed25519"):
        install.install(archive, root, trust=[rsa + ".pub"], **QUIET)


# ---- archive contents and size --------------------------------------------------------------------
def test_unlisted_archive_member_is_refused(srcs, root, tmp_path):
    install.install(srcs[0], root, activate=True, **QUIET)
    before = snapshot(root)
    for extra in ([("notes.txt", "file", b"not in the manifest")],
                  [("plans/x.plan", "file", b"device-local")]):
        archive = raw_tar(str(tmp_path / "extra.tar.gz"), bundle_members(srcs[1]) + extra)
        with pytest.raises(EdgeError, match="not listed in the manifest"):
            install.install(archive, root, activate=True, **QUIET)
        assert snapshot(root) == before


def test_archive_unpacking_past_the_limit_is_refused(srcs, root, tmp_path):
    install.install(srcs[0], root, activate=True, **QUIET)
    before = snapshot(root)
    archive = str(tmp_path / "bomb.tar.gz")
    with tarfile.open(archive, "w:gz") as tar:
        for name, _, data in bundle_members(srcs[1]):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
        ti = tarfile.TarInfo("zeros.bin")
        ti.size = 3 << 20
        tar.addfile(ti, io.BytesIO(bytes(ti.size)))
    assert os.path.getsize(archive) < 64 << 10                  # small packed, 3 MiB unpacked
    with pytest.raises(EdgeError, match="unpacks to more than 2 MiB"):
        install.install(archive, root, activate=True, max_unpacked_mb=2, **QUIET)
    assert edge_cmd("install", archive, "--root", root, "--max-unpacked-mb", "2") == 2
    assert snapshot(root) == before
    assert install.MAX_UNPACKED_MB >= 1024                      # the stated default


# ---- folder installs -----------------------------------------------------------------------------
def test_folder_with_a_link_is_refused_and_unlisted_files_are_not_copied(srcs, root, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("plant passwords")
    os.chmod(secret, 0o600)
    b = str(tmp_path / "b")
    shutil.copytree(srcs[0], b)
    os.symlink(secret, os.path.join(b, "notes.txt"))
    with pytest.raises(EdgeError, match="symbolic link"):
        install.install(b, root, **QUIET)
    assert not os.path.exists(os.path.join(root, "bundles")) or not install.installed_dirs(root)
    os.unlink(os.path.join(b, "notes.txt"))
    with open(os.path.join(b, "notes.txt"), "w") as f:
        f.write("an unlisted file")
    res = install.install(b, root, **QUIET)
    assert sorted(os.listdir(res.path)) == ["manifest.sha256", "manifest.yaml", "model.onnx"]


# ---- arguments ------------------------------------------------------------------------------------
def test_install_root_that_is_a_file_and_pack_to_a_folder(srcs, tmp_path, capsys):
    a_file = tmp_path / "root-file"
    a_file.write_text("not a folder")
    assert edge_cmd("install", srcs[0], "--root", str(a_file)) == 2
    assert "not a folder" in capsys.readouterr().err
    assert edge_cmd("bundles", "--root", str(a_file)) == 2
    assert edge_cmd("rollback", "--root", str(a_file)) == 2
    folder = tmp_path / "out"
    folder.mkdir()
    assert edge_cmd("pack", srcs[0], str(folder)) == 2
    assert "is a folder" in capsys.readouterr().err
    assert os.listdir(folder) == []


def test_manifest_yaml_of_a_packed_bundle_is_its_own(srcs, tmp_path):
    """The archive's manifest is the bundle's, so its id is the installed id."""
    out = str(tmp_path / "b.tar.gz")
    install.pack(srcs[0], out)
    with tarfile.open(out) as tar:
        m = yaml.safe_load(tar.extractfile("manifest.yaml"))
    from edge.bundle.identity import bundle_id
    from edge.bundle.manifest import Bundle
    assert bundle_id(m) == Bundle(srcs[0]).id
