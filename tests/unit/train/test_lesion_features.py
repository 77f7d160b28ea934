"""LiteMedSAM lesion features of an ROI folder, computed from its source images (real LiteMedSAM), and cached."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

from branet_pacs.datasets.cases import load_gray
from branet_pacs.datasets.rois import PrepareReport, load_roi_set, write_roi_dataset
from branet_pacs.imaging import lesion_descriptors
from branet_pacs.models.feature_head import lesion_feature_rows
from branet_pacs.models.segmenter import LiteMedSAMSegmenter, pooled_embedding
from branet_pacs.train import lesion_features

from synthetic import blob_case


def test_features_follow_the_roi_order_and_are_cached(tmp_path: Path, monkeypatch) -> None:
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    benign, other = blob_case(rng, src / "benign", "b1"), blob_case(rng, src / "malignant", "m1")
    malignant = dataclasses.replace(other, category="malignant",
                                    lesions=tuple(dataclasses.replace(les, label="malignant") for les in other.lesions))
    cases = [benign, malignant]
    rois = tmp_path / "rois"
    write_roi_dataset(cases, rois, PrepareReport("synthetic", str(src), 0.15))
    features = lesion_features.folder_features(rois)
    data = load_roi_set(rois)
    assert features.shape == (len(data), 512) and np.isfinite(features).all()

    # the first row is the benign case: LiteMedSAM on its source image, prompted with its box
    segmenter = LiteMedSAMSegmenter("cpu")
    image = load_gray(cases[0].path)
    embedding = segmenter.embed(image)
    (mask,) = segmenter.decode(embedding, [cases[0].lesions[0].box])
    np.testing.assert_allclose(features[0], pooled_embedding(embedding, mask), atol=1e-5)

    # the MG head's second block: the lesion descriptors on the same box, and the pipeline builds the same row
    both = lesion_features.head_features(rois, ("litemedsam", "lesion-descriptors"))
    assert both.shape == (len(data), 512 + lesion_descriptors.COUNT)
    row = lesion_feature_rows(("litemedsam", "lesion-descriptors"), image, segmenter, embedding, [mask],
                              [cases[0].lesions[0].box])
    np.testing.assert_allclose(both[0], row[0], atol=1e-5)
    assert (rois / lesion_features.DESCRIPTORS_CACHE_FILE).is_file()

    # the lesion-crop block: LiteMedSAM again, on a crop around the box, the same in training and in the pipeline
    three = ("litemedsam", "litemedsam-crop", "lesion-descriptors")
    all_three = lesion_features.head_features(rois, three)
    assert all_three.shape == (len(data), 512 + 512 + lesion_descriptors.COUNT)
    crop_row = lesion_feature_rows(three, image, segmenter, embedding, [mask], [cases[0].lesions[0].box])
    np.testing.assert_allclose(all_three[0], crop_row[0], atol=1e-4)
    assert not np.allclose(all_three[0, 512:1024], all_three[0, :512], atol=1e-2)   # it sees something else

    # the crop's encoder stages: the same crops, read by the same code in training and in the pipeline
    four = ("litemedsam", "litemedsam-crop", "litemedsam-crop-stages", "lesion-descriptors")
    all_four = lesion_features.head_features(rois, four)
    assert all_four.shape == (len(data), 512 + 512 + 960 + lesion_descriptors.COUNT)
    np.testing.assert_allclose(all_four[:, :1024], all_three[:, :1024], atol=1e-4)
    stage_row = lesion_feature_rows(four, image, segmenter, embedding, [mask], [cases[0].lesions[0].box])
    np.testing.assert_allclose(all_four[0], stage_row[0], atol=1e-4)
    assert (rois / lesion_features.CROP_STAGES_CACHE_FILE).is_file()

    monkeypatch.setattr(LiteMedSAMSegmenter, "embed", lambda *a: pytest.fail("the cache was not used"))
    monkeypatch.setattr(LiteMedSAMSegmenter, "embed_with_stages", lambda *a: pytest.fail("the cache was not used"))
    monkeypatch.setattr(lesion_descriptors, "lesion_descriptors", lambda *a: pytest.fail("the cache was not used"))
    np.testing.assert_array_equal(lesion_features.folder_features(rois), features)
    np.testing.assert_array_equal(lesion_features.head_features(rois, ("litemedsam", "lesion-descriptors")), both)
    np.testing.assert_array_equal(lesion_features.head_features(rois, three), all_three)
    np.testing.assert_array_equal(lesion_features.head_features(rois, four), all_four)


def test_features_need_the_source_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    src = tmp_path / "src"
    rois = tmp_path / "rois"
    write_roi_dataset([blob_case(rng, src / "benign", "b1")], rois, PrepareReport("synthetic", str(src), 0.15))
    shutil.rmtree(src)
    with pytest.raises(FileNotFoundError, match="source images"):
        lesion_features.folder_features(rois)
