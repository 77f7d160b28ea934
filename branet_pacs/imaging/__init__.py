"""Image-space operations on plain numpy arrays: ROI extraction, mask geometry, MG breast masks."""
