"""Image-level evaluation parts that need no model."""

from branet_pacs.evaluation.images import roi_key


def test_roi_and_case_keys_agree():
    assert roi_key("benign/benign (106)-1.png") == roi_key("benign/benign (106)") == "benign (106)"
    assert roi_key("malignant/mdb028-2.png") == roi_key("mdb028") == "mdb028"


def _score(name: str, category: str, score: float, best_proposal: float, site: str = "a"):
    from branet_pacs.evaluation.images import ImageScore

    found = best_proposal > 0
    return ImageScore(name, category, score if found else 0.0, int(found), 0.6 if found else 0.0, site, best_proposal)


def test_proposal_floor_replay_drops_findings_below_it():
    from branet_pacs.evaluation.images import _summary, at_floor

    scores = [_score("b1", "benign", 0.2, 0.9), _score("m1", "malignant", 0.8, 0.04),
              _score("n1", "normal", 0.7, 0.03), _score("n2", "normal", 0.1, 0.6)]
    everything = _summary(at_floor(scores, 0.0), threshold=0.5)
    assert everything["normal_images_with_finding"] == 1.0 and everything["normal_images_called_malignant"] == 0.5
    assert everything["auc_benign_vs_malignant"] == 1.0 and everything["lesion_images_with_finding"] == 1.0
    strict = _summary(at_floor(scores, 0.05), threshold=0.5)
    assert strict["normal_images_with_finding"] == 0.5 and strict["normal_images_called_malignant"] == 0.0
    assert strict["auc_benign_vs_malignant"] == 0.0          # the malignant image lost its only finding
    assert strict["lesion_images_with_finding"] == 0.5 and strict["sensitivity"] == 0.0


def test_summary_sweeps_the_floor_for_us_and_not_for_mg():
    from branet_pacs.evaluation.images import summarise

    scores = [_score("b1", "benign", 0.2, 0.9), _score("m1", "malignant", 0.8, 0.04), _score("n1", "normal", 0.7, 0.03)]
    us = summarise(scores, "US", out_of_fold=False, threshold=0.5)
    floors = [row["floor"] for row in us["by_best_proposal_min_score"]]
    assert floors == sorted(floors) and 0.0 in floors and 0.5 in floors
    assert "by_best_proposal_min_score" not in summarise(scores, "MG", out_of_fold=False, threshold=0.5)
