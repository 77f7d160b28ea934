"""The data models learn from: public dataset readers, fold splits, and the ROI dataset format.

One reader per dataset (`busi`, `mias`, `boxes` for a CSV of boxes) turns a dataset folder into `Case` values:
an image, its lesions (label, box, mask) and the group that must never be split across folds (patient, or
identical images). Everything downstream reads cases through them: `branet prepare` (ROI datasets, `rois.py`),
detector training, image-level evaluation and the research scripts. `folds.make_folds` is the one fold splitter.
A new dataset is a new reader module here, added to `READERS` in `readers.py`.
"""
