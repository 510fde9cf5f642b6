"""The line loop: run configuration, preprocessing, the staged pipeline and `edge run`."""
