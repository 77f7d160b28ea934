"""`open_archive(url)`: the archive implementation a URL names (the one module that knows them all)."""

from __future__ import annotations

from branet_pacs.reanalysis.archive import (
    Archive,
    ConnectionOptions,
    parse_dicomweb,
    parse_dimse,
    parse_folder,
    redact,
    validate_url,
)
from branet_pacs.reanalysis.dicomweb import DicomWebArchive
from branet_pacs.reanalysis.dimse import DimseArchive
from branet_pacs.reanalysis.folder import FolderArchive


def open_archive(url: str, options: ConnectionOptions | None = None) -> Archive:
    """The archive named by `url` (nothing is contacted until the first call)."""
    options = options or ConnectionOptions()
    validate_url(url)
    if url.startswith("dimse://"):
        return DimseArchive(parse_dimse(url), options, url)
    if url.startswith("dicomweb+"):
        return DicomWebArchive(parse_dicomweb(url), options, redact(url))
    return FolderArchive(parse_folder(url), url)
