"""The live view: the page server (/, /status.json, /healthz, /frame.jpg) and heat-map overlays."""
