"""Installing model bundles on the line-side box, switching between them, and packing them
(`pack` comes from edge.bundle.archive). The commands over it are in edge/bundle/commands/:

    edge install BUNDLE_DIR_OR_ARCHIVE [--root /opt/lineside] [--activate] [--keep 3]
                 [--trust KEY.pub] [--signature ARCHIVE.sig] [--max-unpacked-mb 4096]
    edge rollback [--root /opt/lineside]
    edge bundles  [--root /opt/lineside] [--verify]
    edge pack     BUNDLE OUT.tar.gz [--sign KEY]

Layout under the root (default /opt/lineside, or $LINESIDE_ROOT):

    bundles/<name>-<id8>/   verified copies; <id8> starts the bundle's id (edge/bundle/identity.py:
                            the sha256 of its canonical manifest without the device-local
                            `plans:`), recorded in manifest.sha256 and checked at every open
    trusted-keys/*.pub      optional: ed25519 public keys; when any is present (or --trust is
                            given) only archives signed by one of them are installed
    bundles.json            when each bundle was installed (for pruning)
    current  -> bundles/... the active bundle (relative symlink, switched atomically)
    previous -> bundles/... the one before it (`edge rollback` swaps the two)

A bundle is verified (every file against the manifest's sha256) before it is copied, again
after the copy, and again before it is made current; a bundle that fails changes nothing.
An archive (.tar, .tar.gz, .tgz) is unpacked member by member: absolute names, '..', links
that leave the archive, devices and FIFOs, members the manifest does not list and more than
--max-unpacked-mb in all are refused. A folder holding a symbolic link is refused. Only the
manifest and the files it lists are copied: TensorRT plans are not (they are device-local:
`edge build <root>/current` makes them on the box), nor anything else in the folder.

Only the last N installed bundles are kept (default 3), plus whatever current and previous
point to. Installs, activations and rollbacks on one root are serialised with a lock file.
"""

import errno
import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass

from .manifest import MANIFEST, Bundle, dump_yaml
from ..common.errors import EdgeError
from .archive import (ARCHIVE_SUFFIXES, MAX_UNPACKED_MB, _find_bundle_root, check_listed, is_archive, pack,
                      safe_extract)
from .identity import ID_FILE, bundle_id  # noqa: F401 (install.bundle_id: the one bundle id)
from . import signing
from ..common.fsutil import StagedDir, _fsync_dir, atomic_write_text
from ..common.names import install_root

DEFAULT_KEEP = 3
BUNDLES = "bundles"
CURRENT = "current"
PREVIOUS = "previous"
INSTALL_LOG = "bundles.json"
LOCK = ".lock"


def _root(root):
    """The install root as an absolute path; EdgeError when it exists and is not a folder."""
    root = os.path.abspath(install_root(root))
    if os.path.exists(root) and not os.path.isdir(root):
        raise EdgeError("install root is not a folder", root)
    return root


def _slug(text):
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-.")
    return s[:64] or "bundle"


def _strip_archive_suffix(name):
    for suffix in ARCHIVE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def bundle_name(manifest, hint, id8):
    """The manifest's `name`, else the folder or archive name, without a trailing -<id8>."""
    name = manifest.get("name") or hint or manifest.get("method") or "bundle"
    name = _slug(name)
    if name.endswith("-" + id8):
        name = name[: -len(id8) - 1] or "bundle"
    return name


# ---- the root: lock, links, install log --------------------------------------------------
@contextmanager
def root_lock(root):
    try:
        os.makedirs(os.path.join(root, BUNDLES), exist_ok=True)
    except OSError as exc:
        raise EdgeError(f"cannot use the install root: {exc.strerror}", root) from None
    fd = os.open(os.path.join(root, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise EdgeError("another install or rollback is running on this root", root) from None
            raise
        yield
    finally:
        os.close(fd)


def link_target(root, which):
    """The bundle folder a link (current/previous) points to, or None."""
    link = os.path.join(root, which)
    if not os.path.islink(link):
        return None
    return os.path.normpath(os.path.join(root, os.readlink(link)))


def _set_link(root, which, target):
    """Point <root>/<which> at `target` atomically: a new symlink beside it, then rename."""
    rel = os.path.relpath(target, root)
    tmp = os.path.join(root, f".{which}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    os.symlink(rel, tmp)
    try:
        os.replace(tmp, os.path.join(root, which))
    except BaseException:
        os.unlink(tmp)
        raise
    _fsync_dir(root)


def _read_log(root):
    try:
        with open(os.path.join(root, INSTALL_LOG)) as f:
            log = json.load(f)
        return log if isinstance(log, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_log(root, log):
    atomic_write_text(os.path.join(root, INSTALL_LOG), json.dumps(log, indent=1, sort_keys=True) + "\n")


def installed_dirs(root):
    folder = os.path.join(root, BUNDLES)
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, e) for e in os.listdir(folder)
                  if not e.startswith(".") and os.path.isdir(os.path.join(folder, e)))


# ---- install / activate / rollback / prune ------------------------------------------------
@dataclass
class Installed:
    name: str
    path: str
    id: str
    reused: bool
    activated: bool
    pruned: list


def _verified(path, what):
    try:
        return Bundle(path)
    except EdgeError as exc:
        raise EdgeError(f"{what} refused, nothing changed: {exc}") from None


def _refuse_links(folder):
    """A folder install copies files, never what a link points to: refuse any link in it."""
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                raise EdgeError(f"bundle folder holds a symbolic link ({os.path.relpath(path, folder)} -> "
                                f"{os.readlink(path)}); links are refused, copy the file in", folder)


def _copy_bundle(bundle, dst, bid):
    """Copy the manifest (without `plans:`) and the files it lists, nothing else; record the
    bundle id beside the manifest."""
    for name in sorted(bundle.manifest["files"]):
        out = os.path.join(dst, *name.split("/"))
        os.makedirs(os.path.dirname(out), exist_ok=True)
        shutil.copyfile(os.path.join(bundle.path, *name.split("/")), out, follow_symlinks=False)
    manifest = bundle.copy_manifest()
    manifest.pop("plans", None)
    atomic_write_text(os.path.join(dst, MANIFEST), dump_yaml(manifest))
    atomic_write_text(os.path.join(dst, ID_FILE), bid + "\n")


def _readable(folder):
    """Folders 0755, files 0644: the service user reads what an admin installed."""
    os.chmod(folder, 0o755)
    for dirpath, dirnames, filenames in os.walk(folder):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o755)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o644)


def install(source, root=None, activate=False, keep=DEFAULT_KEEP, log=print, trust=(), signature=None,
            max_unpacked_mb=MAX_UNPACKED_MB, engine="auto", precision="fp32"):
    """Verify and copy a bundle folder or archive into <root>/bundles/<name>-<id8>; with
    `activate`, prove it on `engine` and `precision` with its reference frames, then make it
    current. A bundle that fails verification changes nothing; one whose reference frames score
    otherwise than on the workstation stays installed but is not activated. With trusted keys
    (`trust`, or <root>/trusted-keys/*.pub) only a signed archive is installed."""
    root = _root(root)
    source = os.path.abspath(source)
    if not os.path.exists(source):
        raise EdgeError("bundle folder or archive not found", source)
    if keep < 1:
        raise EdgeError(f"--keep must be 1 or more (got {keep})")
    if not max_unpacked_mb > 0:
        raise EdgeError(f"--max-unpacked-mb must be more than 0 (got {max_unpacked_mb})")
    keys = signing.trusted_keys(root, trust)
    if os.path.isdir(source):
        if keys:
            raise EdgeError("this box trusts signing keys and installs signed archives only "
                            "(edge pack BUNDLE OUT.tar.gz --sign KEY)", source)
        _refuse_links(source)
    elif is_archive(source):
        if keys:
            signer = signing.verify_archive(source, keys, signature)
            log(f"signature ok: {os.path.basename(signer)}")
    else:
        raise EdgeError("not a bundle folder or a .tar/.tar.gz/.tgz archive", source)
    with root_lock(root):
        bundles_dir = os.path.join(root, BUNDLES)
        incoming = None
        try:
            if os.path.isdir(source):
                src, top, hint = os.path.realpath(source), None, os.path.basename(source)
            else:
                incoming = tempfile.mkdtemp(prefix=".incoming-", dir=bundles_dir)
                archive, tree = source, os.path.join(incoming, "tree")
                os.mkdir(tree)
                if keys:        # unpack the very bytes whose signature was checked
                    archive = os.path.join(incoming, "archive")
                    shutil.copyfile(source, archive)
                    signing.verify_archive(archive, keys, signature or source + signing.SIG_SUFFIX)
                safe_extract(archive, tree, max_unpacked_mb)
                src, top = _find_bundle_root(tree, source)
                hint = top or _strip_archive_suffix(os.path.basename(source))
            bundle = _verified(src, "bundle")
            if incoming:
                check_listed(tree, bundle.manifest, source, top)
            bid = bundle.id
            name = bundle_name(bundle.manifest, hint, bid[:8])
            dest, reused = _existing(bundles_dir, bid), True
            if dest is None:
                dest, reused = os.path.join(bundles_dir, f"{name}-{bid[:8]}"), False
                with StagedDir(dest) as tmp:
                    _copy_bundle(bundle, tmp, bid)
                    _readable(tmp)
                    _verified(tmp, "copy of the bundle")   # a bad disk shows here
            log(f"{'already installed' if reused else 'installed'}: {os.path.relpath(dest, root)}")
        finally:
            if incoming:
                shutil.rmtree(incoming, ignore_errors=True)
        entries = _read_log(root)
        entries[os.path.basename(dest)] = time.time()
        _write_log(root, entries)
        activated = False
        if activate:
            prove(dest, engine, precision, log)
            activated = _activate(root, dest, log)
        pruned = prune(root, keep, log=log, _locked=True)
    return Installed(os.path.basename(dest), dest, bid, reused, activated, pruned)


def prove(path, engine="auto", precision="fp32", log=print):
    """Run the bundle's reference frames through the engine and precision this box will use;
    EdgeError (activation refused) when they score otherwise than on the workstation. A
    TensorRT box without a plan yet is checked by `edge build` when it makes one."""
    from ..engines import open_engine, resolve_kind
    from . import reference

    bundle = Bundle(path)
    kind = resolve_kind(engine)
    try:
        eng = open_engine(bundle, kind, precision)
    except EdgeError as exc:
        if kind == "tensorrt":
            log(f"reference frames not checked on TensorRT ({exc}); `edge build` checks each plan it makes")
            return None
        raise EdgeError(f"activation refused: {exc}") from None
    try:
        return reference.check(bundle, eng, precision, "activation refused (installed, not current)", log=log)
    finally:
        eng.close()


def _existing(bundles_dir, bid):
    """An installed copy of the bundle with this id that still verifies, or None (a damaged
    copy of the same name is then replaced by a fresh one, atomically)."""
    suffix = "-" + bid[:8]
    for path in installed_dirs(os.path.dirname(bundles_dir)):
        if not os.path.basename(path).endswith(suffix):
            continue
        try:
            if Bundle(path).id == bid:
                return path
        except EdgeError:
            pass
    return None


def _activate(root, target, log):
    target = os.path.normpath(target)
    _verified(target, "activation")
    current = link_target(root, CURRENT)
    if current == target:
        log(f"already current: {os.path.relpath(target, root)}")
        return False
    _switch(root, target, current, log)
    return True


def _switch(root, target, current, log):
    """current -> target, previous -> what was current (each link replaced atomically)."""
    if current is not None and os.path.isdir(current):
        _set_link(root, PREVIOUS, current)
    _set_link(root, CURRENT, target)
    log(f"current -> {os.path.relpath(target, root)}"
        + (f" (previous -> {os.path.relpath(current, root)})" if current else ""))


def rollback(root=None, log=print):
    """Swap current and previous (so a second rollback undoes the first). Refused, with
    nothing changed, when there is no previous bundle or it fails verification."""
    root = _root(root)
    with root_lock(root):
        previous, current = link_target(root, PREVIOUS), link_target(root, CURRENT)
        if previous is None or not os.path.isdir(previous):
            raise EdgeError("no previous bundle to roll back to", os.path.join(root, PREVIOUS))
        _verified(previous, "rollback")
        _switch(root, previous, current, log)
    return previous


def prune(root=None, keep=DEFAULT_KEEP, log=print, _locked=False):
    """Delete all but the `keep` most recently installed bundles, never current or previous;
    also leftovers of interrupted installs. Returns the names deleted."""
    root = _root(root)
    if not _locked:
        with root_lock(root):
            return prune(root, keep, log, _locked=True)
    bundles_dir = os.path.join(root, BUNDLES)
    for entry in os.listdir(bundles_dir):           # crashed installs (we hold the lock)
        if entry.startswith(".") and (entry.startswith((".incoming-", ".deleting-"))
                                      or entry.endswith((".partial", ".old"))):
            shutil.rmtree(os.path.join(bundles_dir, entry), ignore_errors=True)
    entries = _read_log(root)
    protected = {link_target(root, CURRENT), link_target(root, PREVIOUS)}
    dirs = installed_dirs(root)

    def when(path):
        t = entries.get(os.path.basename(path))
        return float(t) if isinstance(t, (int, float)) else os.stat(path).st_mtime

    newest_first = sorted(dirs, key=when, reverse=True)
    removed = []
    for path in newest_first[keep:]:
        if os.path.normpath(path) in protected:
            continue
        doomed = os.path.join(bundles_dir, ".deleting-" + os.path.basename(path))
        os.replace(path, doomed)                   # gone from the listing at once
        shutil.rmtree(doomed, ignore_errors=True)
        removed.append(os.path.basename(path))
        log(f"removed old bundle: {os.path.relpath(path, root)}")
    live = {os.path.basename(p) for p in installed_dirs(root)}
    if set(entries) - live:
        _write_log(root, {k: v for k, v in entries.items() if k in live})
    return removed


def list_bundles(root=None, verify=False):
    """[{name, path, state: current|previous|'', method, created, installed, ok, problem}]
    newest install first."""
    root = _root(root)
    entries = _read_log(root)
    current, previous = link_target(root, CURRENT), link_target(root, PREVIOUS)
    rows = []
    for path in installed_dirs(root):
        row = {"name": os.path.basename(path), "path": path,
               "state": "current" if path == current else "previous" if path == previous else "",
               "installed": entries.get(os.path.basename(path)), "ok": True, "problem": None,
               "method": None, "created": None, "id": None}
        try:
            b = Bundle(path, verify=verify)
            row["id"] = b.id
            row["method"] = b.manifest.get("method")
            row["created"] = (b.manifest.get("training") or {}).get("created")
        except EdgeError as exc:
            row["ok"], row["problem"] = False, str(exc)
        rows.append(row)
    rows.sort(key=lambda r: r["installed"] or 0, reverse=True)
    return rows
