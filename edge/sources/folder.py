"""A folder of images, in name order, as a finite source (optionally paced by `fps`)."""

import time

from ..common.errors import EdgeError
from ..common.imageio import list_images, read_rgb
from .base import EndOfStream


class FolderCapture:
    def __init__(self, folder, fps=None):
        self.folder = folder
        self.paths = list_images(folder)
        if not self.paths:
            raise EdgeError("no images (.png, .jpg, .jpeg, .bmp) in folder", folder)
        self._i = 0
        self._period = 1.0 / float(fps) if fps else 0.0
        self._next_t = 0.0

    def grab(self, timeout):
        if self._i >= len(self.paths):
            raise EndOfStream()
        if self._period:
            wait = self._next_t - time.monotonic()
            if wait > timeout:
                time.sleep(timeout)
                return None
            if wait > 0:
                time.sleep(wait)
            self._next_t = max(self._next_t, time.monotonic() - self._period) + self._period
        path = self.paths[self._i]
        self._i += 1
        try:
            return read_rgb(path)   # EdgeError naming the file if it is unreadable
        except EdgeError:
            raise
        except Exception as exc:    # a decoder failing in a way nobody foresaw still names the file
            raise EdgeError(f"cannot decode ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})", path) from None

    def close(self):
        pass

    def describe(self):
        return f"{self.folder} ({len(self.paths)} images)"


def opener(spec, options):
    fps = options.get("fps")
    return (lambda: FolderCapture(spec.target, fps)), spec.target
