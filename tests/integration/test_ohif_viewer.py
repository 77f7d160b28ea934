"""What a radiologist sees in OHIF: the bundled sample studies go through a real node (storescu -> Orthanc ->
pipeline -> SEG + SR stored), then headless Debian chromium opens them in the OHIF build the node serves under
/ohif/ and reads, per image, the outline's text box of our SR: the call and p(malignant) as the node computed them.
Screenshots go to test-artifacts/ (the README shows one)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from branet_pacs.orthanc.rest import HttpOrthanc, OrthancError
from branet_pacs.orthanc.viewer import default_dist, study_url

from orthanc_harness import branet_study, send, start_branet, study_id, wait_final

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
SAMPLES = REPO / "samples"
CHROMIUM_FLAGS = ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
CALL = re.compile(r"(Benign|Malignant): p\(malignant\) (\d+\.\d) %")
THUMBNAIL = '[data-cy^="study-browser-thumbnail"]'


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    assert (default_dist(REPO) / "index.html").is_file(), "OHIF is not unpacked: run `make setup`"
    node = start_branet(tmp_path_factory.mktemp("ohif-node"), stable_age=1)
    yield node
    node.stop()


@pytest.fixture(scope="module")
def studies(node):
    """The sample US and MG studies, analysed: {name: (StudyInstanceUID, /branet/studies detail)}."""
    out = {}
    for name in ("us-study", "mg-study"):
        files = sorted((SAMPLES / name).glob("*.dcm"))
        send(node, files)
        uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        orthanc_id = study_id(node.api(), uid)
        wait_final(node.api(), orthanc_id, timeout=900)
        out[name] = (uid, branet_study(node.api(), orthanc_id))
    return out


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed (scripts/setup.sh installs it)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


def test_viewer_is_behind_the_nodes_authentication(node):
    anonymous = HttpOrthanc(node.url)
    for uri in ("/ohif/", "/ohif/basic", "/dicom-web/studies"):
        with pytest.raises(OrthancError) as info:
            anonymous.get(uri)
        assert info.value.status == 401, uri
    api = node.api()
    page = api.get("/ohif/basic?StudyInstanceUIDs=1.2.3").decode()
    assert "/ohif/app-config.js" in page, "index.html is rewritten to load its files under /ohif/"
    assert b"/dicom-web" in api.get("/ohif/app-config.js")


def _findings(detail: dict) -> dict[int, list[dict]]:
    """Findings of the study by the source image's Instance Number."""
    by_image: dict[int, list[dict]] = {}
    for instance in detail["instances"]:
        for image in instance["images"]:
            by_image.setdefault(image["instance_number"], []).extend(image.get("findings", []))
    return by_image


def _open_until_shown(page, url: str, description: str, shown, screenshot: Path,
                      viewer_errors: Callable[[], list[str]], attempts: int = 4) -> int:
    """Load the study, double-click the thumbnail of `description` and wait for `shown`; returns the attempts used.

    Each attempt starts from a fresh page load. On 2-core CI machines with the software renderer OHIF was seen to
    ignore a double-click that lands while it still loads the study's display sets, and (CI, stop 24) to open the SR
    viewport (image, window, SR badge) without ever drawing its annotations; neither recovered by clicking again on
    the same page. Four loads without the text over ~4 minutes are a failure, with a screenshot, the page text and
    what `viewer_errors` returns then."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in range(1, attempts + 1):
        page.goto(url)
        thumbnail = page.locator(THUMBNAIL, has_text=description).first
        thumbnail.wait_for(timeout=120_000)
        thumbnail.dblclick()
        try:
            shown.wait_for(timeout=60_000)
            return attempt
        except PlaywrightTimeout:
            continue
    page.screenshot(path=str(screenshot))
    pytest.fail(f"{description}: the SR's outline text never showed in {attempts} page loads; screenshot {screenshot}; "
                f"viewer errors: {viewer_errors()!r}; page text: {page.inner_text('body')[:2000]!r}")


@pytest.mark.parametrize("name", ["us-study", "mg-study"])
def test_every_finding_reads_in_ohif_on_its_image(node, studies, browser, name):
    uid, detail = studies[name]
    findings = _findings(detail)
    with_findings = sorted(n for n, f in findings.items() if f)
    assert with_findings, f"{name}: the shipped models found nothing on the samples"
    context = browser.new_context(http_credentials={"username": node.credentials.username,
                                                    "password": node.credentials.password},
                                  viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    console_errors: list[str] = []   # not judged (OHIF logs many); shown when an outline never appears
    page.on("console", lambda message: console_errors.append(message.text) if message.type == "error" else None)
    url = study_url(uid, node.url)
    page.goto(url)
    page.locator(THUMBNAIL).first.wait_for(timeout=120_000)
    page.wait_for_timeout(3000)
    labels = [page.locator(THUMBNAIL).nth(i).inner_text().split("\n") for i in range(page.locator(THUMBNAIL).count())]
    descriptions = {parts[1] for parts in labels if parts[0] in ("SR", "SEG")}
    # one display set per output object: every image's SR (and SEG when it has findings) is reachable
    for number in findings:
        assert f"BraNet RESEARCH USE ONLY SR image {number}" in descriptions, (number, labels)
    for number in with_findings:
        assert f"BraNet RESEARCH USE ONLY SEG image {number}" in descriptions, (number, labels)

    ARTIFACTS.mkdir(exist_ok=True)
    for number in with_findings:
        attempts = _open_until_shown(page, url, f"BraNet RESEARCH USE ONLY SR image {number}",
                                     page.get_by_text("Probability of cancer").first,   # the outline's text box
                                     ARTIFACTS / f"ohif-{name}-image{number}-not-shown.png",
                                     lambda: errors + console_errors[-20:])
        if attempts > 1:
            print(f"{name} image {number}: the SR's outline showed on page load {attempts}")
        shown = [(label.lower(), float(p)) for label, p in CALL.findall(page.inner_text("body"))]
        expected = [(f["label"], 100 * f["p_malignant"]) for f in findings[number]]
        assert len(shown) == len(expected), (shown, expected)
        for (label, p), (want_label, want_p) in zip(sorted(shown), sorted(expected)):
            assert label == want_label and p == pytest.approx(want_p, abs=0.051), (shown, expected)
        page.screenshot(path=str(ARTIFACTS / f"ohif-{name}-image{number}-sr.png"))
    # OHIF 3.13 throws on a SEG of an uncalibrated 2-D image (no Pixel Spacing, so no Pixel Measures values) when it
    # loads it, sometimes without the SEG being opened: the known limitation in docs/viewer.md. Anything else fails.
    # Cornerstone also throws "The stack viewport has been destroyed" when this test reloads the page (at least one
    # reload per image) while a viewport still renders: the test's doing, not the viewer's handling of our objects.
    unexpected = [e for e in errors if "SpacingBetweenSlices" not in e and "viewport has been destroyed" not in e]
    assert not unexpected, unexpected
    context.close()
