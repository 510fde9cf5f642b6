"""The record store's image folder: names, encoding of flagged frames with their heat map,
and walking the date-based tree (YYYY/MM/DD/HHMMSS.mmm_r<run>_s<seq>.jpg|png), oldest first."""

import os
import re
import time

TMP_RE = re.compile(r"^\..+\.tmp$")          # fsutil.atomic_write_bytes' temporary names
NAME_RE = re.compile(r"^\d{6}\.\d{3}_r(\d+)_s(-?\d+)\.(png|jpg)$")
DAY_RE = re.compile(r"^\d{2,4}$")


def encode_image(decision, image_rgb, amap, threshold, ext, jpeg_quality=90):
    """The frame with its heat-map overlay and a caption, encoded as PNG or JPEG bytes, at the
    map's resolution (what the model saw)."""
    from ..view.overlay import encode_verdict

    text = f"#{decision.seq} {decision.reason} score {decision.score:.4g}"
    if decision.part_id:
        text += f" part {decision.part_id}"
    return encode_verdict(image_rgb, amap, threshold, text, decision.reject, ext, jpeg_quality, at="map")


def image_name(decision, run_id, ext):
    """Relative path of a decision's image: UTC capture time, run and frame number."""
    t = float(decision.wall)
    return (time.strftime("%Y/%m/%d/%H%M%S", time.gmtime(t)) + f".{int((t % 1) * 1000):03d}"
            f"_r{run_id}_s{int(decision.seq)}{ext}")


def day_folders(root):
    """(YYYY/MM/DD, folder, sorted names) for every day folder under root, oldest first."""
    for y in _sorted_dirs(root):
        for m in _sorted_dirs(os.path.join(root, y)):
            for d in _sorted_dirs(os.path.join(root, y, m)):
                folder = os.path.join(root, y, m, d)
                try:
                    names = sorted(os.listdir(folder))
                except OSError:
                    continue
                yield f"{y}/{m}/{d}", folder, names


def unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _sorted_dirs(folder):
    try:
        return sorted(n for n in os.listdir(folder) if DAY_RE.match(n) and os.path.isdir(os.path.join(folder, n)))
    except OSError:
        return []


def remove_empty_upwards(folder, root):
    """Remove a now-empty day folder and its empty month/year folders (never `root`)."""
    root = os.path.abspath(root)
    while os.path.abspath(folder) != root and os.path.abspath(folder).startswith(root + os.sep):
        try:
            os.rmdir(folder)
        except OSError:
            return
        folder = os.path.dirname(folder)
