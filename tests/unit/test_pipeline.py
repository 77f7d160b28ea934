"""Pure parts of the pipeline (prompts, duplicate lesions, frame geometry), with hand-computed answers."""

import numpy as np
import pydicom
import pytest

from branet_pacs.imaging.geometry import mask_box
from branet_pacs.pipeline import Prompt, _finding, _frame_to_image, classifier_view, distinct_lesions
from branet_pacs.types import BreastImage


def image_in_frame(region=(100, 50, 300, 250), frame_shape=(400, 500), breast_mask=None) -> BreastImage:
    x0, y0, x1, y1 = region
    return BreastImage(dataset=pydicom.Dataset(), pixels=np.zeros((y1 - y0, x1 - x0), np.float32), modality="US",
                       frame_number=None, frame_shape=frame_shape, region=region, breast_mask=breast_mask)


def test_frame_box_maps_into_region_and_clips():
    image = image_in_frame(region=(100, 50, 300, 250))
    assert _frame_to_image((120, 60, 180, 100), image) == (20, 10, 80, 50)
    assert _frame_to_image((0, 0, 150, 100), image) == (0, 0, 50, 50)   # clipped to the region
    assert _frame_to_image((0, 0, 50, 40), image) is None               # entirely outside


def test_duplicate_masks_collapse_to_the_best_scored():
    image = image_in_frame()
    a = np.zeros((200, 200), bool)
    a[10:50, 10:50] = True
    b = np.zeros((200, 200), bool)
    b[12:52, 12:52] = True                       # same lesion, slightly shifted
    c = np.zeros((200, 200), bool)
    c[100:150, 100:150] = True                   # another lesion
    prompts = [Prompt((10, 10, 50, 50), 0.6, "auto"), Prompt((12, 12, 52, 52), 0.9, "auto"),
               Prompt((100, 100, 150, 150), 0.7, "auto")]
    kept = distinct_lesions(image, prompts, [a, b, c])
    assert [p.score for p, _, _ in kept] == [0.9, 0.7]


def test_empty_mask_falls_back_to_the_prompt_box_and_breast_mask_clips():
    breast = np.zeros((200, 200), bool)
    breast[:, :100] = True
    image = image_in_frame(breast_mask=breast)
    mask = np.zeros((200, 200), bool)
    mask[20:40, 80:140] = True                   # half outside the breast
    kept = distinct_lesions(image, [Prompt((80, 20, 140, 40), 1.0, "box"),
                                     Prompt((150, 150, 180, 180), 0.5, "box")], [mask, np.zeros((200, 200), bool)])
    assert kept[0][2] == (80, 20, 100, 40)
    assert kept[1][2] == (150, 150, 180, 180)


def test_finding_lives_in_source_frame_coordinates():
    image = image_in_frame(region=(100, 50, 300, 250), frame_shape=(400, 500))
    mask = np.zeros((200, 200), bool)
    mask[10:30, 20:60] = True
    finding = _finding(1, image, Prompt((20, 10, 60, 30), 0.8, "auto"), mask, (18, 8, 62, 32), 0.7, "malignant",
                       0.3)
    assert finding.mask.shape == (400, 500) and finding.roi_margin == 0.3
    assert finding.box == (120, 60, 160, 80)
    assert finding.roi_box == (118, 58, 162, 82)
    assert finding.outline[:, 0].min() >= 119 and finding.outline[:, 1].max() <= 80


def test_classifier_view_reads_the_mask_box_or_for_box_trained_models_the_prompt_box():
    image = image_in_frame()
    mask = np.zeros((200, 200), bool)
    mask[22:30, 30:50] = True                    # the segmenter found a smaller lesion than the prompt's box
    kept = [(Prompt((20, 10, 60, 40), 0.8, "auto"), mask, (30, 22, 50, 30))]
    [(read_mask, box)] = classifier_view("mask", image, kept)
    assert box == (30, 22, 50, 30) and read_mask is mask
    [(read_mask, box)] = classifier_view("prompt", image, kept)
    assert box == (20, 10, 60, 40)
    assert mask_box(read_mask) == (20, 10, 60, 40) and not read_mask[10, 20]   # the inscribed ellipse, not the box


class _FixedDetector:
    """Stands in for the lesion detector: fixed candidates, filtered the way LesionDetector.propose filters."""

    def __init__(self, scores):
        self.scores = scores
        self.asked_min_score = None

    def propose(self, pixels, valid_mask=None, max_proposals=3, min_score=0.5):
        from branet_pacs.models.detector import Proposal

        self.asked_min_score = min_score
        found = [Proposal(box=(10 * i, 10 * i, 10 * i + 8, 10 * i + 8), score=s)
                 for i, s in enumerate(self.scores) if s >= min_score]
        return found[:max_proposals]


@pytest.mark.parametrize("report_best, scores, expected", [
    (True, [0.3, 0.2], [0.3]),              # best kept below min_proposal_score, the weaker one dropped
    (True, [0.9, 0.6, 0.4], [0.9, 0.6]),    # the others need min_proposal_score
    (True, [0.01], []),                     # below best_proposal_min_score there is no candidate at all
    (False, [0.3, 0.2], []),
    (False, [0.9, 0.6, 0.4], [0.9, 0.6]),
])
def test_prompts_report_the_best_proposal_and_confident_others(report_best, scores, expected):
    import dataclasses

    from branet_pacs.config import Config, SegmentationSettings
    from branet_pacs.pipeline import Analyzer

    config = Config(segmentation=SegmentationSettings(min_proposal_score=0.5, max_findings={"US": 3},
                                                      report_best_proposal=("US",) if report_best else ()))
    analyzer = Analyzer(dataclasses.replace(config, threads=1))
    detector = _FixedDetector(scores)
    analyzer.use("detector", "US", detector)
    prompts = analyzer.prompts(image_in_frame(), None)
    assert [p.score for p in prompts] == expected
    assert all(p.kind == "auto" for p in prompts)
    assert detector.asked_min_score == (config.segmentation.best_proposal_min_score if report_best else 0.5)
    assert analyzer.prompts(image_in_frame(), [(120, 60, 160, 100)])[0].kind == "box"


def test_max_findings_and_best_proposal_are_per_modality(tmp_path):
    from branet_pacs.config import DEFAULT_MAX_FINDINGS, load_config

    shipped = load_config().segmentation
    assert shipped.max_findings_for("us") == 1 and shipped.max_findings_for("MG") == 3
    assert shipped.reports_best_proposal("US") and not shipped.reports_best_proposal("MG")
    path = tmp_path / "branet.toml"
    path.write_text('[segmentation]\nmax_findings = { MG = 5 }\nreport_best_proposal = ["mg"]\n')
    custom = load_config(path).segmentation
    assert custom.max_findings_for("MG") == 5 and custom.max_findings_for("US") == DEFAULT_MAX_FINDINGS
    assert custom.reports_best_proposal("MG") and not custom.reports_best_proposal("US")


def test_min_proposal_score_is_one_number_or_per_modality(tmp_path):
    import dataclasses

    from branet_pacs.config import DEFAULT_MIN_PROPOSAL_SCORE, Config, SegmentationSettings, load_config
    from branet_pacs.pipeline import Analyzer

    path = tmp_path / "branet.toml"
    path.write_text('[segmentation]\nmin_proposal_score = { MG = 0.8 }\n')
    per_modality = load_config(path).segmentation
    assert per_modality.min_proposal_score_for("mg") == 0.8
    assert per_modality.min_proposal_score_for("US") == DEFAULT_MIN_PROPOSAL_SCORE
    path.write_text('[segmentation]\nmin_proposal_score = 0.6\n')
    everywhere = load_config(path).segmentation
    assert everywhere.min_proposal_score_for("MG") == everywhere.min_proposal_score_for("US") == 0.6
    # the pipeline asks the detector for the image's own modality's floor
    config = Config(segmentation=SegmentationSettings(min_proposal_score={"US": 0.7, "MG": 0.2},
                                                      max_findings={"US": 3}, report_best_proposal=()))
    analyzer = Analyzer(dataclasses.replace(config, threads=1))
    detector = _FixedDetector([0.9, 0.6, 0.4])
    analyzer.use("detector", "US", detector)
    assert [p.score for p in analyzer.prompts(image_in_frame(), None)] == [0.9]
    assert detector.asked_min_score == 0.7
