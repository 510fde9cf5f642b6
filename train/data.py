"""Data sets in MVTec AD layout (no torch here: evaluation uses this too).

  <root>/train/good/*.png|jpg|bmp
  <root>/validation/good/...                  optional: threshold data
  <root>/test/good/...  <root>/test/<defect type>/...
  <root>/ground_truth/<defect type>/<name>_mask.png
Images may have any size and aspect ratio, colour or grayscale."""

import hashlib
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from edge.common.errors import EdgeError
from edge.common.fsutil import sha256_file
from edge.common.imageio import IMAGE_EXTENSIONS, list_images, read_mask, read_rgb


@dataclass
class Sample:
    path: str
    label: int                  # 0 good, 1 defective
    defect_type: str
    mask_path: Optional[str]    # None for good images, or where the set has no masks


class MvtecSet:
    def __init__(self, root):
        self.root = os.path.abspath(root)
        if not os.path.isdir(root):
            raise EdgeError("data folder not found", root)

    def _sub(self, *parts):
        return os.path.join(self.root, *parts)

    def train_good(self):
        folder = self._sub("train", "good")
        if not os.path.isdir(folder):
            raise EdgeError("no train/good folder (MVTec AD layout expected)", self.root)
        paths = list_images(folder)
        if not paths:
            raise EdgeError(f"train split is empty (no {'/'.join(IMAGE_EXTENSIONS)} files)", folder)
        return paths

    def validation_good(self):
        folder = self._sub("validation", "good")
        return list_images(folder) if os.path.isdir(folder) else None

    def test(self):
        folder = self._sub("test")
        if not os.path.isdir(folder):
            raise EdgeError("no test folder", self.root)
        samples = []
        for kind in sorted(os.listdir(folder)):
            if not os.path.isdir(os.path.join(folder, kind)):
                continue
            gt_dir = self._sub("ground_truth", kind)
            for path in list_images(os.path.join(folder, kind)):
                mask = None
                if kind != "good" and os.path.isdir(gt_dir):
                    stem = os.path.splitext(os.path.basename(path))[0]
                    mask = next((os.path.join(gt_dir, stem + "_mask" + ext) for ext in (".png", ".bmp", ".jpg")
                                 if os.path.isfile(os.path.join(gt_dir, stem + "_mask" + ext))), None)
                    if mask is None:
                        raise EdgeError(f"no mask for {kind}/{os.path.basename(path)} "
                                        f"(expected {stem}_mask.png)", gt_dir)
                samples.append(Sample(path, int(kind != "good"), kind, mask))
        if not samples:
            raise EdgeError("test split is empty", folder)
        return samples

    def fingerprint(self):
        """sha256 over the training images' relative paths and contents."""
        h = hashlib.sha256()
        paths = self.train_good() + (self.validation_good() or [])
        for p in paths:
            h.update(os.path.relpath(p, self.root).encode() + b"\0" + sha256_file(p).encode() + b"\n")
        return {"sha256": h.hexdigest(), "images": len(paths)}


def _preprocess(pre, img, out, path):
    """pre(img, out=out), with a problem (a region of interest outside the image) naming the file."""
    try:
        pre(img, out=out)
    except EdgeError as exc:
        if exc.where:
            raise
        raise EdgeError(str(exc), path) from None


def load_images(paths, pre, progress=None):
    """Read and preprocess images into one N x H x W x 3 uint8 array."""
    h, w = pre.size[1], pre.size[0]
    out = np.empty((len(paths), h, w, 3), np.uint8)
    for i, p in enumerate(paths):
        _preprocess(pre, read_rgb(p), out[i], p)
        if progress:
            progress(i + 1, len(paths))
    return out


def load_test(samples, pre, progress=None):
    """Test images (N x H x W x 3 uint8) and masks (N x H x W bool, all False for good images),
    each mask checked against its own image's size before the crop and resize."""
    h, w = pre.size[1], pre.size[0]
    images = np.empty((len(samples), h, w, 3), np.uint8)
    masks = np.zeros((len(samples), h, w), bool)
    for i, s in enumerate(samples):
        img = read_rgb(s.path)
        _preprocess(pre, img, images[i], s.path)
        if s.mask_path:
            m = read_mask(s.mask_path)
            if m.shape != img.shape[:2]:
                raise EdgeError(f"mask size {m.shape[1]}x{m.shape[0]} does not match its image "
                                f"{img.shape[1]}x{img.shape[0]} ({os.path.basename(s.path)})", s.mask_path)
            masks[i] = pre.mask(m)
        if progress:
            progress(i + 1, len(samples))
    return images, masks


def auto_size(root, long_side=256, roi=None, multiple=32):
    """(height, width): the training images' median aspect ratio (of the region of interest
    where one is given) with `long_side` pixels on the long side, both rounded to `multiple`."""
    paths = MvtecSet(root).train_good()
    step = max(1, len(paths) // 64)
    ratios = []
    for p in paths[::step]:
        h, w = (roi[3], roi[2]) if roi else read_rgb(p).shape[:2]
        ratios.append(h / w)
    r = float(np.median(ratios))

    def rnd(v):
        return int(max(multiple, round(v / multiple) * multiple))
    return (rnd(long_side), rnd(long_side / r)) if r >= 1 else (rnd(long_side * r), rnd(long_side))
