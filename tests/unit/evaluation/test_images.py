"""Image-level evaluation parts that need no model."""

from branet_pacs.evaluation.images import roi_key


def test_roi_and_case_keys_agree():
    assert roi_key("benign/benign (106)-1.png") == roi_key("benign/benign (106)") == "benign (106)"
    assert roi_key("malignant/mdb028-2.png") == roi_key("mdb028") == "mdb028"
