"""Training: the malignancy classifier (`classifier.py`, `branet train`), the lesion detector (`detector.py` +
`detector_data.py`, `branet train-detector`), augmentation, and the model cards both write."""
