"""What every room uses: the toolkit's error, atomic file writes, image reading, value checks,
progress lines and the evaluation metrics (numpy only)."""
