"""Reading images and masks with errors that name the file (no torch, no PIL)."""

import os

import cv2
import numpy as np

from .errors import EdgeError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")


def list_images(folder):
    """Sorted image files in a folder (not recursive)."""
    if not os.path.isdir(folder):
        raise EdgeError("folder not found", folder)
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith("."))
    return [os.path.join(folder, n) for n in names]


def _check_complete(path, data):
    """OpenCV decodes many truncated files with only a warning; refuse them here."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".png":
        if not data.rstrip(b"\x00")[-12:].startswith(b"\x00\x00\x00\x00IEND"):
            raise EdgeError("truncated PNG (no IEND chunk)", path)
    elif ext in (".jpg", ".jpeg"):
        if not data.rstrip(b"\x00")[-2:] == b"\xff\xd9":
            raise EdgeError("truncated JPEG (no end-of-image marker)", path)
    elif ext == ".bmp":
        if len(data) >= 6:
            declared = int.from_bytes(data[2:6], "little")
            if declared > len(data):
                raise EdgeError(f"truncated BMP ({len(data)} of {declared} bytes)", path)


def _read(path, flags):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise EdgeError(f"cannot read: {exc.strerror}", path) from None
    if not data:
        raise EdgeError("empty file", path)
    _check_complete(path, data)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if img is None:
        raise EdgeError("not a readable image", path)
    return img


def read_rgb(path):
    """Colour or grayscale, 8 or 16 bit, to H x W x 3 uint8 RGB."""
    img = _read(path, cv2.IMREAD_COLOR)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_mask(path):
    """A ground-truth mask: any non-zero pixel is defective."""
    return _read(path, cv2.IMREAD_GRAYSCALE) > 0
