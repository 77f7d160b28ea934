"""ROI thumbnails for the Orthanc Explorer panel: the finding's ROI window on the source image, lesion outline in red.

The window is the classifier's (`imaging.roi.roi_window` at the finding's ROI margin), so the thumbnail shows what
the model judged. Runs in the worker process (numpy, Pillow), never inside Orthanc.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from branet_pacs.imaging.roi import crop_padded, roi_window, stretch
from branet_pacs.types import BreastImage, Finding

THUMBNAIL_SIZE = 160
OUTLINE_COLOUR = (255, 64, 64)


def render_thumbnail(image: BreastImage, finding: Finding, size: int = THUMBNAIL_SIZE) -> bytes:
    """PNG bytes: the ROI window around `finding` (grayscale, contrast-stretched) with its outline drawn."""
    rx0, ry0 = image.region[0], image.region[1]
    x0, y0, x1, y1 = finding.roi_box or finding.box
    window = roi_window((x0 - rx0, y0 - ry0, x1 - rx0, y1 - ry0), finding.roi_margin)
    gray = stretch(crop_padded(image.pixels, window))
    side = gray.shape[0]
    picture = Image.fromarray(np.round(gray * 255).astype(np.uint8), mode="L").convert("RGB")
    picture = picture.resize((size, size), Image.Resampling.BILINEAR)
    scale = size / side
    points = [((float(c) - rx0 - window[0]) * scale, (float(r) - ry0 - window[1]) * scale)
              for c, r in np.asarray(finding.outline)]
    if len(points) >= 2:
        ImageDraw.Draw(picture).line(points, fill=OUTLINE_COLOUR, width=2)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
