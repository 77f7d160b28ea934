"""The one fold splitter: stratified k-fold, grouped so that a group (a patient, identical images) never straddles
folds. Classifier training, detector training and out-of-fold evaluation all split here (scikit-learn)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

Split = tuple[np.ndarray, np.ndarray]   # (training indices, validation indices)


def make_folds(labels: Sequence, groups: Sequence | None, k: int, seed: int) -> list[Split]:
    """k shuffled folds stratified by `labels`; with `groups`, every group lies in one fold only.

    `groups=None` splits item by item: only for models trained that way before groups were known (the
    out-of-fold evaluation of such a model must repeat its split).
    """
    labels = np.asarray(labels)
    placeholder = np.zeros(len(labels))
    if groups is not None:
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        return list(splitter.split(placeholder, labels, groups=np.asarray(groups)))
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return list(splitter.split(placeholder, labels))
