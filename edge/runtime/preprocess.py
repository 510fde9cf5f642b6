"""The only per-frame work on the host: region-of-interest crop and resize to the graph's size.

Colour conversion, casting and normalisation happen inside the graph."""

import cv2
import numpy as np

from ..common.errors import EdgeError


class Preprocessor:
    def __init__(self, height, width, roi=None, source_order="RGB"):
        self.size = (int(width), int(height))
        self.roi = tuple(int(v) for v in roi) if roi else None
        self.swap = source_order.upper() == "BGR"

    @classmethod
    def for_bundle(cls, bundle, source_order="RGB"):
        h, w = bundle.input_hw
        return cls(h, w, bundle.roi, source_order)

    def __call__(self, frame, out=None):
        """frame: H x W x 3 uint8 (or H x W gray). Returns height x width x 3 uint8 RGB."""
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
        elif self.swap:
            frame = frame[..., ::-1]
        if self.roi:
            x, y, w, h = self.roi
            if x + w > frame.shape[1] or y + h > frame.shape[0]:
                raise EdgeError(f"region of interest x={x} y={y} w={w} h={h} does not fit in the "
                                f"{frame.shape[1]}x{frame.shape[0]} image")
            frame = frame[y:y + h, x:x + w]
        if frame.shape[1] != self.size[0] or frame.shape[0] != self.size[1]:
            frame = cv2.resize(np.ascontiguousarray(frame), self.size, interpolation=cv2.INTER_AREA
                               if frame.shape[1] > self.size[0] else cv2.INTER_LINEAR)
        if out is not None:
            out[...] = frame
            return out
        return np.ascontiguousarray(frame)

    def mask(self, m):
        """The same crop and resize for a ground-truth mask (nearest neighbour)."""
        if self.roi:
            x, y, w, h = self.roi
            m = m[y:y + h, x:x + w]
        return cv2.resize(m.astype(np.uint8), self.size, interpolation=cv2.INTER_NEAREST) > 0
