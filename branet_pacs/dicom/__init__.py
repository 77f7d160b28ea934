"""DICOM in and out: ingest (select + decode), pixel data, the SEG and TID 1500 SR writers (derived.py: what they
share — equipment, UIDs, the reference header, laterality), coded concepts."""
