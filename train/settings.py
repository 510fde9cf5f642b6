"""The training settings (`edge train`), one typed object checked once: an error names the
setting and the value at fault."""

import dataclasses
import math
from typing import Optional, Tuple

from edge.common.errors import EdgeError


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    method: str                                  # a key of train.methods.METHODS
    data: str                                    # data set root in MVTec AD layout
    out: str                                     # bundle folder to write
    size: Tuple[int, int] = (256, 256)           # graph input, height x width
    backbone: str = "efficientnet-lite0"
    weights: Optional[str] = None                # local checkpoint for the backbone
    roi: Optional[Tuple[int, int, int, int]] = None   # x, y, w, h in source pixels
    false_reject: float = 0.01                   # target share of good parts rejected (the operating point)
    folds: Optional[int] = None                  # contiguous folds of train/good scored for the threshold
                                                 # (None: auto, edge.common.oppoint.fold_count)
    sigma: float = 4.0                           # Gaussian smoothing of the map, pixels
    method_params: dict = dataclasses.field(default_factory=dict)
    evaluate: bool = True                        # evaluate on the test split when it exists
    threads: Optional[int] = None                # CPU threads (None: all cores)
    border: int = 16
    strides: Tuple[int, ...] = (4, 8, 16)
    device: str = "auto"                         # auto | cpu | cuda
    epochs: Optional[int] = None                 # None: the method's default for the device
    batch_size: Optional[int] = None             # None: the method's default
    lr: Optional[float] = None                   # None: the method's default
    seed: int = 0
    patience: int = 0                            # early stopping after this many epochs without a
                                                 # better held-out loss (0: never)
    resume: bool = True                          # resume from <out>.train-state when it matches
    score: Optional[str] = None                  # max | top:FRACTION (None: the method's default)
    holdout: float = 0.2                         # methods that train networks: share of train/good held
                                                 # out as its tail block (early stopping, threshold)

    def __post_init__(self):
        from .methods import METHODS
        if self.method not in METHODS:
            _bad("method", f"must be one of {', '.join(sorted(METHODS))}, got {self.method!r}")
        for key in ("data", "out", "backbone"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                _bad(key, f"must be a non-empty string, got {getattr(self, key)!r}")
        size = tuple(self.size)
        if len(size) != 2 or not all(_is_int(v) and 32 <= v <= 4096 for v in size):
            _bad("size", f"must be N or HxW with 32..4096 pixels, got {'x'.join(map(str, size))}")
        object.__setattr__(self, "size", size)
        if self.roi is not None:
            roi = tuple(self.roi)
            if len(roi) != 4 or not all(_is_int(v) for v in roi) or min(roi[:2]) < 0 or min(roi[2:]) <= 0:
                _bad("roi", f"must be x,y,w,h in pixels of the source image (w, h > 0), got "
                            f"{','.join(map(str, roi))}")
            object.__setattr__(self, "roi", roi)
        if not _is_num(self.false_reject) or not 0 < self.false_reject < 0.5:
            _bad("false_reject", f"must be a fraction of good parts above 0 and below 0.5 (0.01 = 1 %), "
                                 f"got {self.false_reject!r}")
        if self.folds is not None and (not _is_int(self.folds) or self.folds < 2):
            _bad("folds", f"must be auto or 2 or more, got {self.folds!r}")
        if not _is_num(self.holdout) or not 0 < self.holdout < 1:
            _bad("holdout", f"must be a fraction between 0 and 1 (exclusive), got {self.holdout!r}")
        if not _is_num(self.sigma) or not 0 <= self.sigma <= 64:
            _bad("sigma", f"must be 0..64 pixels, got {self.sigma!r}")
        if self.threads is not None and (not _is_int(self.threads) or self.threads < 1):
            _bad("threads", f"must be 1 or more, got {self.threads!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            _bad("device", f"must be auto, cpu or cuda, got {self.device!r}")
        for key in ("epochs", "batch_size"):
            v = getattr(self, key)
            if v is not None and (not _is_int(v) or v < (0 if key == "epochs" else 1)):
                _bad(key, f"must be a whole number >= {0 if key == 'epochs' else 1}, got {v!r}")
        if self.lr is not None and (not _is_num(self.lr) or self.lr <= 0):
            _bad("lr", f"must be a number > 0, got {self.lr!r}")
        if not _is_int(self.seed) or not _is_int(self.patience) or self.patience < 0:
            _bad("patience" if _is_int(self.seed) else "seed", "must be a whole number >= 0")
        if self.score is not None:
            from .graph import parse_score
            try:
                parse_score(self.score)
            except ValueError as exc:
                _bad("score", str(exc))
        if not isinstance(self.method_params, dict):
            _bad("method_params", f"must be a mapping, got {self.method_params!r}")
        object.__setattr__(self, "method_params", dict(self.method_params or {}))


def _bad(key, message):
    raise EdgeError(message, f"training.{key}")


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
