class ModelUnavailable(RuntimeError):
    """No usable weights for what was asked (missing, wrong checksum, wrong modality). Never fall back to random."""
