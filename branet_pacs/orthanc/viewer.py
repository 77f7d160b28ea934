"""The OHIF viewer served by the node itself, same origin as Orthanc's DICOMweb, behind Orthanc's authentication.

`make setup` unpacks the prebuilt `dist/` of the pinned npm package `@ohif/app` (OHIF_VERSION) under
`var/ohif/<version>/`. The plugin answers `/ohif/...` from there. The build assumes it is served at "/", so the
places that say so are moved under /ohif/ as they are served: `index.html`'s asset paths, webpack's public path in
each bundle (`__webpack_require__.p = "/"`) and the fonts' `url(/...)` in the CSS; `app-config.js` is ours (one
DICOMweb data source, Orthanc's `/dicom-web`, no cross-origin warning); the service worker is not served (it would
cache the viewer outside the node's control); any other path is the single-page app (`index.html`). Orthanc
checks the credentials of every request before a plugin sees it, so the viewer and the DICOMweb it reads need the
node's login like the rest of the REST API.
"""

from __future__ import annotations

import mimetypes
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

OHIF_VERSION = "3.13.2"
# npm's integrity value of @ohif/app@3.13.2 (sha512 of the tarball); set-up refuses any other tarball
OHIF_INTEGRITY = "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="
PREFIX = "/ohif"
DICOMWEB_ROOT = "/dicom-web"
VIEWER_MODE = "basic"      # OHIF's mode without measurement tracking prompts (the "viewer" mode asks to track)

_TYPES = {".js": "application/javascript", ".mjs": "application/javascript", ".css": "text/css",
          ".html": "text/html; charset=utf-8", ".json": "application/json", ".wasm": "application/wasm",
          ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon", ".woff2": "font/woff2",
          ".woff": "font/woff", ".ttf": "font/ttf", ".map": "application/json", ".txt": "text/plain"}


def default_dist(repo: Path) -> Path:
    return repo / "var" / "ohif" / OHIF_VERSION


def study_url(study_instance_uid: str, base: str = "") -> str:
    """Where a radiologist opens a study (relative to the node's HTTP root, or under `base`)."""
    return f"{base}{PREFIX}/{VIEWER_MODE}?StudyInstanceUIDs={study_instance_uid}"


APP_CONFIG = """window.config = {
  name: 'BraNet-PACS',
  routerBasename: '%(prefix)s',
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  investigationalUseDialog: { option: 'never' },
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'BraNet-PACS (Orthanc)',
        name: 'orthanc',
        qidoRoot: '%(dicomweb)s',
        wadoRoot: '%(dicomweb)s',
        wadoUriRoot: '%(dicomweb)s',
        qidoSupportsIncludeField: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        omitQuotationForMultipartRequest: true,
        bulkDataURI: { enabled: true },
      },
    },
  ],
};
"""


@dataclass(frozen=True)
class ViewerResponse:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


class ViewerFiles:
    """Answers for `/ohif/<path>` from the unpacked OHIF dist folder."""

    def __init__(self, dist: Path) -> None:
        self.dist = Path(dist)
        self._index: bytes | None = None

    @property
    def installed(self) -> bool:
        return (self.dist / "index.html").is_file()

    def index_html(self) -> bytes:
        if self._index is None:
            text = (self.dist / "index.html").read_text(encoding="utf-8")
            text = text.replace('window.PUBLIC_URL="/"', f'window.PUBLIC_URL="{PREFIX}/"')
            for attribute in ("href", "src", "content"):
                text = text.replace(f'{attribute}="/', f'{attribute}="{PREFIX}/')
            self._index = text.replace(f'"{PREFIX}//', '"//').encode("utf-8")
        return self._index

    def answer(self, path: str) -> ViewerResponse:
        if not self.installed:
            return ViewerResponse(404, f"OHIF {OHIF_VERSION} is not installed in {self.dist}: run `make setup`"
                                  .encode())
        relative = PurePosixPath(path.lstrip("/"))
        if ".." in relative.parts:
            return ViewerResponse(404, b"not found")
        name = str(relative)
        if name == "app-config.js":
            return ViewerResponse(200, (APP_CONFIG % {"prefix": PREFIX, "dicomweb": DICOMWEB_ROOT}).encode(),
                                  _TYPES[".js"])
        if name in ("", ".", "index.html"):
            return ViewerResponse(200, self.index_html(), _TYPES[".html"])
        if name == "sw.js":
            return ViewerResponse(404, b"no service worker")
        file = self.dist / name
        if file.is_file() and file.resolve().is_relative_to(self.dist.resolve()):
            suffix = file.suffix.lower()
            kind = _TYPES.get(suffix) or mimetypes.guess_type(file.name)[0] or "application/octet-stream"
            body = file.read_bytes()
            if suffix == ".js":
                body = body.replace(b'__webpack_require__.p = "/"', f'__webpack_require__.p = "{PREFIX}/"'.encode())
            elif suffix == ".css":
                body = body.replace(b"url(/", f"url({PREFIX}/".encode())
            return ViewerResponse(200, body, kind)
        if "." in relative.name:            # a missing asset, not an app route
            return ViewerResponse(404, b"not found")
        return ViewerResponse(200, self.index_html(), _TYPES[".html"])   # the single-page app's own routes
