"""DICOM in and out: ingest (select + decode), SEG and TID 1500 SR writers, coded concepts, validators."""
