"""CAMs and backprop views: pure maths, target kinds, and the runs (sessions, gradients)."""
