"""Source URIs: parse a user's string into what to open, or say what is supported."""

import os
import re
from dataclasses import dataclass
from typing import Union

from ..common.errors import EdgeError

# scheme -> one line for error messages and docs
SCHEMES = {
    "file://": "file://video.mp4 (a video file; a folder path means a folder of images)",
    "folder://": "folder:///path/to/images (or a plain folder path)",
    "v4l2://": "v4l2:///dev/video0 (USB / V4L2 camera)",
    "rtsp://": "rtsp://host:port/path (also rtsps://)",
    "csi://": "csi://0 (Jetson CSI camera through nvarguscamerasrc)",
    "gige://": "gige://NAME-or-IP (GigE Vision / GenICam through Aravis; aravis:// too)",
    "gst://": "gst://<pipeline> ! appsink (or any string containing '!')",
    "opencv://": "opencv://0 or opencv://<path-or-url> (cv2.VideoCapture)",
}

_ALIASES = {"rtsps": "rtsp", "aravis": "gige", "genicam": "gige", "dir": "folder"}
_SCHEME_RE = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://(.*)$", re.S)


@dataclass
class SourceSpec:
    kind: str                   # folder | file | v4l2 | rtsp | csi | gige | gst | opencv
    target: Union[str, int]     # path, device, URL, sensor id, camera name, pipeline
    uri: str                    # what the user wrote
    finite: bool = False        # ends by itself (end of file, last image) rather than drops out


def supported():
    return "; ".join(SCHEMES.values())


def _bad(uri, why):
    return EdgeError(f"{why}; supported sources: {supported()}", f"source {uri!r}")


def parse(uri):
    """Turn a source string into a SourceSpec, or raise EdgeError naming it."""
    if not isinstance(uri, str) or not uri.strip():
        raise _bad(uri, "empty source")
    text = uri.strip()
    m = _SCHEME_RE.match(text)
    if m is None:
        if "!" in text:
            return SourceSpec("gst", text, uri)
        return _plain_path(text, uri)
    scheme, rest = m.group(1).lower(), m.group(2)
    scheme = _ALIASES.get(scheme, scheme)
    if scheme == "gst":
        if not rest.strip():
            raise _bad(uri, "gst:// needs a pipeline")
        return SourceSpec("gst", rest.strip(), uri)
    if scheme == "file":
        if not rest:
            raise _bad(uri, "file:// needs a path")
        return _plain_path(rest, uri)
    if scheme == "folder":
        if not os.path.isdir(rest):
            raise EdgeError("folder not found", rest)
        return SourceSpec("folder", rest, uri, finite=True)
    if scheme == "v4l2":
        dev = rest
        if dev.isdigit():
            dev = f"/dev/video{dev}"
        if not dev.startswith("/dev/"):
            raise _bad(uri, "v4l2:// needs a device such as v4l2:///dev/video0")
        return SourceSpec("v4l2", dev, uri)
    if scheme == "rtsp":
        if not rest or rest.startswith("/"):
            raise _bad(uri, "rtsp:// needs a host")
        return SourceSpec("rtsp", text, uri)
    if scheme == "csi":
        if not rest.isdigit():
            raise _bad(uri, "csi:// needs a sensor number such as csi://0")
        return SourceSpec("csi", int(rest), uri)
    if scheme == "gige":
        return SourceSpec("gige", rest.strip("/"), uri)
    if scheme == "opencv":
        if not rest:
            raise _bad(uri, "opencv:// needs a camera index, path or URL")
        target = int(rest) if rest.isdigit() else rest
        return SourceSpec("opencv", target, uri, finite=isinstance(target, str) and os.path.isfile(target))
    raise _bad(uri, f"unknown scheme {scheme + '://'!r}")


def _plain_path(path, uri):
    if path.startswith("/dev/video"):
        return SourceSpec("v4l2", path, uri)
    if os.path.isdir(path):
        return SourceSpec("folder", path, uri, finite=True)
    if os.path.isfile(path):
        return SourceSpec("file", path, uri, finite=True)
    raise EdgeError(f"no such file or folder; supported sources: {supported()}", f"source {uri!r}")


def mask_credentials(text):
    """rtsp://user:secret@host -> rtsp://user:***@host, for logs and describe()."""
    return re.sub(r"(://[^/:@\s]+):[^@/\s]*@", r"\1:***@", str(text))
