"""Workstation-side conversion: graph checks, precision variants, TensorRT plan builds."""
