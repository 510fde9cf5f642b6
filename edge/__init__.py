"""Line-side runtime: bundles, engines, capture, decisions, outputs, records.

Nothing in this package imports torch: it must run on a Jetson box (or any small
x86 box) that has only numpy, OpenCV, PyYAML and an inference engine.
"""

__version__ = "0.1.0"
