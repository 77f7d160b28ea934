"""Model loading and inference: lesion detector (proposals), segmenters (SAM family), malignancy classifier."""
