"""BraNet-PACS: breast-imaging AI node (research use only).

Data flows one way: ingest (dicom.ingest) -> ROIs (imaging) -> segment + classify (models) -> encode (dicom.seg,
dicom.sr). `branet_pacs.pipeline` strings the stages together; the CLI and the Orthanc adapter are two thin doors
into it.
"""

__version__ = "0.1.0"
ALGORITHM_NAME = "BraNet-PACS"
MANUFACTURER = "BraNet-PACS project"
