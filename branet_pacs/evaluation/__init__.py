"""Evaluation: metrics and plots (shared with training), a classifier on ROIs (`rois.py`, `branet evaluate`), the
automatic pipeline on whole images (`images.py`, `branet evaluate-images`), lesion proposals (`proposals.py`) and
reader agreement (`agreement.py`)."""
