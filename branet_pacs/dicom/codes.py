"""Every coded concept the SEG and SR writers use, in one place.

Codes are (value, scheme, meaning) triples from the DICOM Content Mapping Resource (PS3.16): SCT = SNOMED CT,
DCM = DICOM, LN = LOINC, UCUM = units, UMLS = UMLS CUI. Each was checked against pydicom's copy of the PS3.16
code tables (`pydicom.sr.codedict.codes`), and the comments name the context group (CID) or template (TID) that
uses it, so a reader can see why it was chosen.
"""

from __future__ import annotations

from pydicom.sr.codedict import codes as pydicom_codes
from pydicom.sr.coding import Code

# --- Segmentation (SEG Segment Description) -------------------------------------------------------------------

# CID 7150 "Segmentation Property Category": SCT 49755003 "Morphologically abnormal structure".
SEGMENT_CATEGORY = Code("49755003", "SCT", "Morphologically Abnormal Structure")
# CID 7159 "Lesion Segmentation Type" (included in CID 7151 "Segmentation Property Type"): SCT 52988006 "Lesion".
# "Lesion" rather than "Mass": the detector proposes any focal abnormality (BUSI cysts and solid lesions, MIAS
# masses, asymmetries and distortions), and the SR uses the same concept as finding type so both objects agree.
LESION = Code("52988006", "SCT", "Lesion")
# CID 7162 "Algorithm Family": DCM 123110 "Artificial Intelligence".
ALGORITHM_FAMILY = Code("123110", "DCM", "Artificial Intelligence")

# --- Anatomy ----------------------------------------------------------------------------------------------------

# CID 4 / CID 4031 anatomic region: SCT 76752008 "Breast" (finding site and SEG anatomic region).
BREAST = Code("76752008", "SCT", "Breast")
# CID 244 "Laterality": SCT 7771000 "Left", SCT 24028007 "Right" (modifier of the finding site / anatomic region).
LEFT = Code("7771000", "SCT", "Left")
RIGHT = Code("24028007", "SCT", "Right")
LATERALITY = {"L": LEFT, "R": RIGHT}

# TID 1601 "Image Library Entry": IMAGE item (SCT 260753009 "Source"), as highdicom writes it.
SOURCE = Code("260753009", "SCT", "Source")


def modality(value: str) -> Code | None:
    """CID 29 "Acquisition Modality" code for a Modality attribute value (DCM codes are the modality itself); None
    for a value that is not an acquisition modality (OT, SC: the TID 1602 Modality descriptor is then left out)."""
    for keyword in dir(pydicom_codes.cid29):
        code = getattr(pydicom_codes.cid29, keyword)
        if isinstance(code, Code) and code.scheme_designator == "DCM" and code.value == value:
            return code
    return None


# --- TID 1500 Measurement Report --------------------------------------------------------------------------------

# CID 7021 "Measurement Report Document Title": DCM 126000 "Imaging Measurement Report" (highdicom's default).
REPORT_TITLE = Code("126000", "DCM", "Imaging Measurement Report")
# Procedure reported (TID 1500 row 4) is bound to DCID 100 "Quantitative Diagnostic Imaging Procedures", which has
# no breast procedure; pixelmed's validator rejects codes outside it, so the content tree says SCT 363679005
# "Imaging procedure" (a CID 100 member) and the SR header's Performed Procedure Code Sequence names the breast
# procedure from CID 6050 "Breast Procedure Reported":
#   US -> SCT 47079000 "Ultrasonography of breast";
#   MG/DX breast images -> LOINC "breast - left/right mammogram", or "breast - unilateral mammogram" when the side
#   is unknown (one analysed image always shows one breast).
IMAGING_PROCEDURE = Code("363679005", "SCT", "Imaging procedure")
PROCEDURE_BREAST_US = Code("47079000", "SCT", "Ultrasonography of breast")
PROCEDURE_MAMMOGRAM = {
    "L": Code("36627-8", "LN", "breast - left mammogram"),
    "R": Code("37774-7", "LN", "breast - right mammogram"),
    None: Code("46339-8", "LN", "breast - unilateral mammogram"),
}

# The algorithm's benign/malignant call on each finding. Concept name DCM 121073 "Impression": an observer's
# interpretation of the images (PS3.16; CID 7002 "Diagnostic Imaging Report Elements"), here the device observer's
# — an assessment, not a result. Not DCM 111042 "Pathology", which DICOM's breast CAD templates (TID 4006) use for
# the histology of a biopsy: a reader could take "Pathology = Malignant" for a proven cancer. Values are the SNOMED
# CT qualifier values "Benign" (30807003) and "Malignant" (21594007), the pair DICOM lists in CID 6063.
IMPRESSION = Code("121073", "DCM", "Impression")
BENIGN = Code("30807003", "SCT", "Benign")
MALIGNANT = Code("21594007", "SCT", "Malignant")
LABEL_CODES = {"benign": BENIGN, "malignant": MALIGNANT}
# An analysed image without finding: TID 1500 row 12 "Qualitative Evaluations" (UMLS C0034375) carrying
# "Impression" = DCM 111286 "No abnormality" (CID 6030).
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
NO_ABNORMALITY = Code("111286", "DCM", "No abnormality")

# Probability of malignancy: DCM 111047 "Probability of cancer" (CID 6048). DICOM's breast CAD template (TID 4005
# row 5) binds this concept to UNITS = UCUM "%" with values 0-100, so the SR stores 100 * p(malignant) in percent
# (OHIF shows it as e.g. "73.4 %"); readers divide by 100.
PROBABILITY_OF_CANCER = Code("111047", "DCM", "Probability of cancer")
PERCENT = Code("%", "UCUM", "Percent")
# How sure the lesion detector is that an automatic finding is a lesion: DCM 111012 "Certainty of Finding", in %
# as in the breast CAD templates (TID 4000 family). Absent for user-drawn boxes.
CERTAINTY_OF_FINDING = Code("111012", "DCM", "Certainty of Finding")

# Link from each measurement group to its SEG segment: an IMAGE item DCM 121200 "Illustration of ROI" (an image
# illustrating the ROI: the segment is its pixel-wise depiction) referencing the SEG instance + segment number, as
# TID 1410 row 9 has it; TID 1501 is extensible and has no row of its own for it. The group's Tracking UID equals
# the segment's Tracking UID as well. (An IMAGE named "Referenced Segment" would make validators apply the
# volumetric template TID 1411.)
ILLUSTRATION_OF_ROI = Code("121200", "DCM", "Illustration of ROI")
# The call in words for readers and viewers that show text but not coded values (OHIF labels an outline with the
# Comment items of its group): DCM 121106 "Comment".
COMMENT = Code("121106", "DCM", "Comment")

# SOP class of the Mammography CAD SR (PS3.4), written by branet_pacs.dicom.cad_sr
MAMMOGRAPHY_CAD_SR = "1.2.840.10008.5.1.4.1.1.88.50"
