"""What travels between the stages of the line-side pipeline."""

from dataclasses import dataclass, field
from typing import Optional

import numpy as np


@dataclass
class Frame:
    """One captured frame. `seq` counts frames from the source's start (gaps mean drops);
    `t_capture` is time.monotonic() at capture (for scheduling), `wall` is time.time()."""
    seq: int
    t_capture: float
    wall: float
    image: np.ndarray               # H x W x 3 uint8, in the source's colour order
    encoder: Optional[int] = None   # encoder count at capture, where the line has one
    part_id: Optional[str] = None


@dataclass
class Decision:
    """The verdict on one frame, traceable to it by `seq`."""
    seq: int
    t_capture: float
    wall: float
    score: float
    reject: bool
    reason: str                     # "ok", "score", "area", "failsafe:<why>", "late"
    latency_s: float = 0.0          # capture to decision
    defect_area: float = 0.0        # fraction of map pixels above threshold
    encoder: Optional[int] = None
    part_id: Optional[str] = None
    extra: dict = field(default_factory=dict)
