"""Reading images and masks with errors that name the file (no torch, no PIL).

Every file is checked from its bytes before it is decoded: the format from its signature (not
its name), the size from its header (more than MAX_IMAGE_PIXELS is refused, so a small file
declaring a huge image never reaches the decoder), and completeness (a PNG's chunks and their
CRCs to IEND, a JPEG's end marker, a BMP's declared length)."""

import os
import struct
import zlib

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


MAX_IMAGE_PIXELS = 100_000_000        # 100 megapixels; more is refused before decoding
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def max_pixels():
    """The pixel limit: MAX_IMAGE_PIXELS, or $LINESIDE_MAX_IMAGE_PIXELS where set."""
    env = os.environ.get("LINESIDE_MAX_IMAGE_PIXELS")
    if env:
        try:
            value = int(env)
        except ValueError:
            value = 0
        if value < 1:
            raise EdgeError(f"must be a positive integer, got {env!r}", "LINESIDE_MAX_IMAGE_PIXELS")
        return value
    return MAX_IMAGE_PIXELS


def _kind(data):
    if data.startswith(PNG_SIGNATURE):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"BM") and len(data) >= 26:
        return "BMP"
    return None


def _png_chunks(path, data):
    """Walk the chunks (length, type, CRC) to IEND: a damaged or truncated file is refused
    here, before libpng sees it (and prints its own lines). Returns (width, height)."""
    pos, size = len(PNG_SIGNATURE), None
    while True:
        if pos + 12 > len(data):
            raise EdgeError("truncated PNG (no IEND chunk)", path)
        length = int.from_bytes(data[pos:pos + 4], "big")
        ctype = data[pos + 4:pos + 8]
        end = pos + 12 + length
        if end > len(data):
            raise EdgeError(f"truncated PNG (chunk {ctype.decode('latin-1')!r} runs past the end)", path)
        body = data[pos + 4:end - 4]
        if zlib.crc32(body) & 0xFFFFFFFF != int.from_bytes(data[end - 4:end], "big"):
            raise EdgeError(f"damaged PNG (CRC error in chunk {ctype.decode('latin-1')!r})", path)
        if size is None:
            if ctype != b"IHDR" or length != 13:
                raise EdgeError("damaged PNG (no IHDR chunk first)", path)
            size = struct.unpack(">II", data[pos + 8:pos + 16])
        if ctype == b"IEND":
            return size
        pos = end


def _jpeg_size(path, data):
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:                 # fill byte
            pos += 1
            continue
        if marker in (0x01,) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker in _JPEG_SOF:
            if pos + 9 > len(data):
                break
            h, w = struct.unpack(">HH", data[pos + 5:pos + 9])
            if not data.rstrip(b"\x00")[-2:] == b"\xff\xd9":
                raise EdgeError("truncated JPEG (no end-of-image marker)", path)
            return w, h
        if marker == 0xDA or length < 2:   # scan data before any frame header
            break
        pos += 2 + length
    if not data.rstrip(b"\x00")[-2:] == b"\xff\xd9":
        raise EdgeError("truncated JPEG (no end-of-image marker)", path)
    raise EdgeError("damaged JPEG (no frame header)", path)


def _bmp_size(path, data):
    declared = int.from_bytes(data[2:6], "little")
    if declared > len(data):
        raise EdgeError(f"truncated BMP ({len(data)} of {declared} bytes)", path)
    header = int.from_bytes(data[14:18], "little")
    if header == 12:
        return struct.unpack("<HH", data[18:22])
    w, h = struct.unpack("<ii", data[18:26])
    return abs(w), abs(h)


def image_size(path, data):
    """(format, width, height) from the file's header, without decoding; EdgeError for a file
    that is not PNG, JPEG or BMP data (whatever its name says) or is damaged or truncated."""
    kind = _kind(data)
    if kind is None:
        raise EdgeError("not a readable image (not PNG, JPEG or BMP data)", path)
    w, h = {"PNG": _png_chunks, "JPEG": _jpeg_size, "BMP": _bmp_size}[kind](path, data)
    if w < 1 or h < 1:
        raise EdgeError(f"not a readable image ({kind} header says {w}x{h} pixels)", path)
    return kind, w, h


def _read(path, flags):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise EdgeError(f"cannot read: {exc.strerror}", path) from None
    if not data:
        raise EdgeError("empty file", path)
    kind, w, h = image_size(path, data)
    limit = max_pixels()
    if w * h > limit:
        raise EdgeError(f"image is {w}x{h} = {w * h / 1e6:.0f} megapixels, more than the limit of "
                        f"{limit / 1e6:g} (LINESIDE_MAX_IMAGE_PIXELS); refused before decoding", path)
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as exc:
        raise EdgeError(f"not a readable {kind} image ({' '.join(str(exc).split())[-120:]})", path) from None
    if img is None:
        raise EdgeError(f"not a readable {kind} image", path)
    return img


def read_rgb(path):
    """Colour or grayscale, 8 or 16 bit, to H x W x 3 uint8 RGB."""
    img = _read(path, cv2.IMREAD_COLOR)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_mask(path):
    """A ground-truth mask: any non-zero pixel is defective."""
    return _read(path, cv2.IMREAD_GRAYSCALE) > 0
