"""Pictures from arrays (colormaps, grids, overlays, plots) and text tables; never writes files."""
