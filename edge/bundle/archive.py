"""Bundle archives: packing a bundle's portable part into a deterministic .tar.gz, and
unpacking one safely (no absolute names, no '..', no links out, no devices or FIFOs, at most
MAX_UNPACKED_MB unpacked, and nothing the manifest does not list)."""

import gzip
import io
import os
import posixpath
import re
import tarfile
import zlib

from .manifest import MANIFEST, Bundle, dump_yaml
from ..common.errors import EdgeError
from ..common.fsutil import atomic_file, sha256_file

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
MAX_MEMBERS = 10000          # an archive with more members than this is not a bundle
MAX_UNPACKED_MB = 4096       # default limit on an archive's unpacked size (edge install --max-unpacked-mb)
PACK_MTIME = 0               # fixed member times: the same bundle packs to the same bytes


def is_archive(path):
    return os.path.isfile(path) and (path.endswith(ARCHIVE_SUFFIXES) or tarfile.is_tarfile(path))


def _member_path(name, archive):
    """The member's normalised relative path, or EdgeError when it would leave the folder."""
    if not name or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise EdgeError(f"archive member has an absolute path: {name!r}", archive)
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        raise EdgeError(f"archive member leaves the folder ('..'): {name!r}", archive)
    return posixpath.normpath("/".join(parts))


def _link_target(member, rel, archive):
    """Where a link member points, relative to the archive's top; refused when outside."""
    target = member.linkname
    if not target or target.startswith("/") or re.match(r"^[A-Za-z]:", target):
        raise EdgeError(f"archive link {rel!r} points outside the archive ({target!r})", archive)
    if member.issym():
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
    else:
        resolved = posixpath.normpath(target)
    if resolved == ".." or resolved.startswith("../") or resolved.startswith("/"):
        raise EdgeError(f"archive link {rel!r} points outside the archive ({target!r})", archive)
    return resolved


def _copy_limited(src, dst, budget, archive, rel):
    """Copy src to dst, counting bytes against budget[0]; EdgeError once it is spent."""
    while True:
        chunk = src.read(1 << 20)
        if not chunk:
            return
        budget[0] -= len(chunk)
        if budget[0] < 0:
            raise EdgeError(f"archive unpacks to more than {budget[1] / 2 ** 20:g} MiB (at {rel!r}); "
                            f"refused (edge install --max-unpacked-mb raises the limit)", archive)
        dst.write(chunk)


def safe_extract(archive, dest, max_unpacked_mb=MAX_UNPACKED_MB):
    """Unpack `archive` into the existing folder `dest`, member by member. Files are written
    with mode 0644; a link that stays inside the archive becomes a copy of its target; any
    member that could write outside `dest` (absolute name, '..', a link leaving the archive),
    a device, a FIFO, a duplicate name, more than MAX_MEMBERS members or more than
    `max_unpacked_mb` MiB in all is refused."""
    dest = os.path.realpath(dest)
    seen = set()
    limit = float(max_unpacked_mb) * 2 ** 20
    budget = [limit, limit]
    try:
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise EdgeError(f"not a readable tar archive: {exc}", archive) from None
    with tar:
        try:
            for count, member in enumerate(tar, 1):
                if count > MAX_MEMBERS:
                    raise EdgeError(f"archive has more than {MAX_MEMBERS} members", archive)
                rel = _member_path(member.name, archive)
                if rel == ".":
                    continue
                if rel in seen:
                    raise EdgeError(f"archive member appears twice: {rel!r}", archive)
                seen.add(rel)
                out = os.path.join(dest, *rel.split("/"))
                if not os.path.realpath(out).startswith(dest + os.sep):
                    raise EdgeError(f"archive member leaves the folder: {rel!r}", archive)
                if member.isdir():
                    os.makedirs(out, exist_ok=True)
                    continue
                if member.issym() or member.islnk():
                    _link_target(member, rel, archive)
                elif not member.isfile():
                    raise EdgeError(f"archive member is not a file or folder: {rel!r}", archive)
                try:
                    src = tar.extractfile(member)
                except (KeyError, tarfile.TarError):
                    src = None
                if src is None:
                    raise EdgeError(f"archive link {rel!r} does not point to a file in it", archive)
                os.makedirs(os.path.dirname(out), exist_ok=True)
                if member.isfile() and member.size > budget[0]:
                    raise EdgeError(f"archive unpacks to more than {limit / 2 ** 20:g} MiB (at {rel!r}); "
                                    f"refused (edge install --max-unpacked-mb raises the limit)", archive)
                with src, open(out, "xb") as f:
                    _copy_limited(src, f, budget, archive, rel)
                os.chmod(out, 0o644)
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            raise EdgeError(f"archive is damaged: {exc}", archive) from None
        except OSError as exc:
            raise EdgeError(f"cannot unpack the archive: {exc}", archive) from None


def _find_bundle_root(folder, archive):
    if os.path.isfile(os.path.join(folder, MANIFEST)):
        return folder, None
    entries = [e for e in os.listdir(folder) if not e.startswith(".")]
    if len(entries) == 1 and os.path.isfile(os.path.join(folder, entries[0], MANIFEST)):
        return os.path.join(folder, entries[0]), entries[0]
    raise EdgeError("archive holds no bundle (no manifest.yaml at its top or in its one folder)",
                    archive)


def check_listed(folder, manifest, archive, top=None):
    """Refuse an unpacked archive (in `folder`; the bundle in its folder `top`, if any) that
    holds a file other than the manifest and the files it lists: nothing unlisted reaches an
    installed bundle."""
    listed = {(top + "/" if top else "") + n for n in list(manifest["files"]) + [MANIFEST]}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            rel = os.path.relpath(os.path.join(dirpath, name), folder).replace(os.sep, "/")
            if rel not in listed:
                raise EdgeError(f"archive member not listed in the manifest: {rel!r} (a bundle "
                                f"archive holds manifest.yaml and the files it lists, nothing else)", archive)


def pack(bundle_path, out_path):
    """Write the bundle's portable part (manifest first, then the listed files in name order;
    no plans) as a deterministic tar or tar.gz. Returns the archive's sha256."""
    bundle = Bundle(bundle_path)
    manifest = bundle.copy_manifest()
    if "plans" in manifest:
        del manifest["plans"]
        manifest_bytes = dump_yaml(manifest).encode("utf-8")
    else:
        with open(os.path.join(bundle.path, MANIFEST), "rb") as f:
            manifest_bytes = f.read()
    names = sorted(manifest["files"])
    for name in names:
        _member_path(name, os.path.join(bundle.path, MANIFEST))

    def info(name, size):
        ti = tarfile.TarInfo(name)
        ti.size, ti.mtime, ti.mode = size, PACK_MTIME, 0o644
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = ""
        return ti

    out_path = os.path.abspath(out_path)
    if os.path.isdir(out_path):
        raise EdgeError("is a folder; give the archive file to write (e.g. bundle.tar.gz)", out_path)
    if not os.path.isdir(os.path.dirname(out_path)):
        raise EdgeError("folder for the archive not found", os.path.dirname(out_path))
    with atomic_file(out_path) as raw:
        gz = None
        fileobj = raw
        if not out_path.endswith(".tar"):
            gz = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6)
            fileobj = gz
        with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(info(MANIFEST, len(manifest_bytes)), io.BytesIO(manifest_bytes))
            for name in names:
                path = os.path.join(bundle.path, name)
                with open(path, "rb") as f:
                    tar.addfile(info(name, os.fstat(f.fileno()).st_size), f)
        if gz is not None:
            gz.close()
    return sha256_file(out_path)
