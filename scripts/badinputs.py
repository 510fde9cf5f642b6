"""Bad images for fault tests and `make bench-faults`: each is a file a camera folder or a
careless copy could hold. Written from scratch with zlib (no image library)."""

import struct
import zlib


def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(path, width=100000, height=100000):
    """A valid-looking PNG of about 1 kB whose header declares width x height RGB pixels
    (10^10 by default): a decoder that believes the header allocates 30 GB."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * 4096, 9)            # a few rows of data, not all of them
    data = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", rows) + _chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(data)
    return path


def truncated_png(path, good_png):
    """The first half of a real PNG."""
    with open(good_png, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:len(data) // 2])
    return path


def text_as_png(path):
    with open(path, "w") as f:
        f.write("part 4711 passed\n" * 20)
    return path


def empty_png(path):
    open(path, "wb").close()
    return path


def garbage_png(path, good_png):
    """A real PNG's signature, header and end chunk around bytes flipped in its image data."""
    with open(good_png, "rb") as f:
        data = bytearray(f.read())
    for i in range(64, len(data) - 16, 7):
        data[i] ^= 0x5A
    with open(path, "wb") as f:
        f.write(bytes(data))
    return path


BAD = {"bomb_100000x100000.png": lambda p, good: bomb_png(p),
       "truncated.png": truncated_png,
       "text_renamed.png": lambda p, good: text_as_png(p),
       "empty.png": lambda p, good: empty_png(p),
       "flipped_bytes.png": garbage_png}
