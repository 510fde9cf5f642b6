"""Heat-map overlays: what an engineer looks at to see why a part was flagged."""

import cv2
import numpy as np


def heat_overlay(image_rgb, amap, threshold, alpha=0.45):
    """Colour the map (blue at half the threshold, red at 1.5x) over the image, outline the
    regions at or above the threshold, and return an RGB uint8 image of the map's size."""
    h, w = amap.shape
    if image_rgb.shape[:2] != (h, w):
        image_rgb = cv2.resize(image_rgb, (w, h))
    lo, hi = 0.5 * threshold, 1.5 * threshold
    norm = np.clip((amap - lo) / max(hi - lo, 1e-12), 0, 1)
    heat = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    out = cv2.addWeighted(image_rgb, 1 - alpha, heat, alpha, 0)
    above = (amap >= threshold).astype(np.uint8)
    if above.any():
        contours, _ = cv2.findContours(above, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (255, 255, 255), 1)
    return out


_FONT, _SCALE, _LINE = cv2.FONT_HERSHEY_SIMPLEX, 0.4, 14


def _caption_lines(text, width):
    """The caption's words in lines that each fit `width` pixels (a word longer than the width
    is cut, never drawn past the edge)."""
    def fits(t):
        return cv2.getTextSize(t, _FONT, _SCALE, 1)[0][0] <= width - 6
    lines = []
    for word in text.split():
        while not fits(word) and len(word) > 1:
            word = word[:-1]
        if lines and fits(lines[-1] + " " + word):
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines or [""]


def label(image_rgb, text, reject):
    """A caption bar above an image: verdict colour and text, wrapped to the image's width."""
    lines = _caption_lines(text, image_rgb.shape[1])
    bar = np.full((4 + _LINE * len(lines), image_rgb.shape[1], 3), (200, 30, 30) if reject else (30, 140, 30), np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(bar, line, (3, 13 + _LINE * i), _FONT, _SCALE, (255, 255, 255), 1, cv2.LINE_AA)
    return np.vstack([bar, image_rgb])


def grid(tiles, cols=6, pad=2):
    """Tiles of equal size in a grid, RGB."""
    if not tiles:
        return np.zeros((1, 1, 3), np.uint8)
    th = max(t.shape[0] for t in tiles)
    tw = max(t.shape[1] for t in tiles)
    rows = (len(tiles) + cols - 1) // cols
    out = np.full((rows * (th + pad) + pad, min(cols, len(tiles)) * (tw + pad) + pad, 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        out[pad + r * (th + pad):pad + r * (th + pad) + t.shape[0], pad + c * (tw + pad):pad + c * (tw + pad) + t.shape[1]] = t
    return out


def verdict_image(image_rgb, amap, threshold, caption, reject, max_width=None, at="image"):
    """A decided frame as the engineer sees it (live view, saved records): the RGB (or grey)
    image with the map (any shape whose last two axes are H x W) overlaid (threshold None: the
    map's maximum) and a caption bar. at="image": the map is resized to the image, scaled
    down first to `max_width` when wider; at="map": the image is resized to the map."""
    img = np.asarray(image_rgb)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if max_width and img.shape[1] > max_width:          # the camera's detail, up to max_width
        h = max(1, int(round(img.shape[0] * max_width / img.shape[1])))
        img = cv2.resize(img, (max_width, h), interpolation=cv2.INTER_AREA)
    if amap is not None:
        amap = np.asarray(amap, np.float32)
        amap = amap.reshape(amap.shape[-2:])
        thr = float(threshold) if threshold is not None else (float(amap.max()) or 1.0)
        if at == "image" and amap.shape != img.shape[:2]:
            amap = cv2.resize(amap, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
        img = heat_overlay(np.ascontiguousarray(img), amap, thr)
    return label(np.ascontiguousarray(img), caption, reject)


def encode(image_rgb, ext=".jpg", jpeg_quality=90):
    """RGB uint8 image -> PNG (fast compression) or JPEG bytes; `ext` is ".png" or ".jpg"."""
    params = [cv2.IMWRITE_PNG_COMPRESSION, 1] if ext == ".png" else [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)]
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(image_rgb[..., ::-1]), params)
    if not ok:
        raise RuntimeError(f"{ext} encoding failed")
    return buf.tobytes()


def encode_verdict(image_rgb, amap, threshold, caption, reject, ext=".jpg", jpeg_quality=90, max_width=None,
                   at="image"):
    """verdict_image() encoded: the one path from a decided frame to image bytes."""
    return encode(verdict_image(image_rgb, amap, threshold, caption, reject, max_width, at), ext, jpeg_quality)


def write_png(path, image_rgb):
    """Encode then write atomically."""
    from ..common.fsutil import atomic_write_bytes
    atomic_write_bytes(path, encode(image_rgb, ".png"))
