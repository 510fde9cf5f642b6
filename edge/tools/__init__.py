"""Commands a technician runs beside the line: predict, bench, check."""
