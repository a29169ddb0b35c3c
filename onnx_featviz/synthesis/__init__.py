"""Feature visualization by optimization: maximize and invert (maths and runs)."""
