"""The BraNet Orthanc node end to end: a real Orthanc with the plugin (`branet orthanc run`), real storescu, real
worker processes and models, a second plain Orthanc acting as the PACS, real validators, headless Chromium.

One node and one PACS serve the whole module (StableAge 1 s); tests build on the studies the first one sends.
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess

import pydicom
import pytest

from branet_pacs.orthanc.launcher import dcmtk_executable, wait_for
from branet_pacs.orthanc.rest import HttpOrthanc, OrthancError

import dicom_factory as factory
import validators as validate
from orthanc_harness import (
    REPO,
    SENDER_AET,
    branet_study,
    download,
    instances_by_modality,
    keep_logs,
    metadata,
    plain_orthanc,
    referenced_sources,
    send,
    small_mg_study,
    small_us_study,
    start_branet,
    study_id,
    wait_final,
    write_files,
    write_template,
)

pytestmark = pytest.mark.integration
ARTIFACTS = REPO / "test-artifacts"
OTHER_HOST_AET = "HOSTBOUND"   # whitelisted, but at another host (TEST-NET-1 address): refused from loopback


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("orthanc-node")
    pacs = plain_orthanc(tmp, "PACS", senders=[("BRANET", "127.0.0.1")])
    template = write_template(tmp / "template.json", Forward={"RetryDelay": 1, "RetryMaxDelay": 2})
    node = start_branet(tmp, forward=[f"PACS={pacs.aet}@127.0.0.1:{pacs.dicom_port}"], template=template,
                        senders=[f"{SENDER_AET}@127.0.0.1", f"{OTHER_HOST_AET}@192.0.2.10"])
    yield {"node": node, "pacs": pacs, "tmp": tmp}
    node.stop()
    pacs.stop()
    keep_logs(node, pacs, prefix="test_orthanc_node")


@pytest.fixture(scope="module")
def api(servers) -> HttpOrthanc:
    return servers["node"].api()


@pytest.fixture(scope="module")
def analysed(servers, api):
    """A 2-image US study and a 2-image MG study, sent together and analysed."""
    tmp = servers["tmp"]
    us, mg = small_us_study(2), small_mg_study(2)
    files = write_files(us, tmp / "in-us") + write_files(mg, tmp / "in-mg")
    send(servers["node"], files)
    by_sop = {path.stem: path for path in files}
    studies = {}
    for name, datasets in (("US", us), ("MG", mg)):
        orthanc_id = study_id(api, str(datasets[0].StudyInstanceUID))
        studies[name] = {"id": orthanc_id, "datasets": datasets,
                         "sources": {str(ds.SOPInstanceUID): by_sop[str(ds.SOPInstanceUID)] for ds in datasets},
                         "detail": wait_final(api, orthanc_id)}
    return studies


def _outputs_of(api: HttpOrthanc, orthanc_id: str) -> tuple[list[dict], list[dict]]:
    found = instances_by_modality(api, orthanc_id)
    return found.get("SR", []), found.get("SEG", [])


def test_us_and_mg_studies_get_seg_and_sr_that_validate(analysed, api, servers):
    tmp = servers["tmp"]
    for name, study in analysed.items():
        detail = study["detail"]
        assert detail["study"]["state"] == "analysed", detail["study"]
        assert detail["study"]["model_version"]
        sources = study["sources"]
        srs, segs = _outputs_of(api, study["id"])
        assert len(srs) == len(study["datasets"]), f"{name}: one SR per image, got {len(srs)}"
        # every image was analysed, and every SR points at exactly one of the sources
        by_source = {}
        for sr_instance in srs:
            sr_path = download(api, sr_instance["ID"], tmp / "out" / name)
            sr = pydicom.dcmread(sr_path)
            refs = referenced_sources(sr) & set(sources)
            assert len(refs) == 1, refs
            by_source[refs.pop()] = sr_path
        assert set(by_source) == set(sources)
        seg_by_source = {}
        for seg_instance in segs:
            seg_path = download(api, seg_instance["ID"], tmp / "out" / name)
            seg = pydicom.dcmread(seg_path)
            source = str(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID)
            seg_by_source[source] = seg_path
        findings = {inst["sop_uid"]: sum(len(img["findings"]) for img in inst["images"])
                    for inst in detail["instances"]}
        assert {s for s, n in findings.items() if n} == set(seg_by_source), "a SEG for each image with findings"
        for sop, sr_path in by_source.items():
            outputs = [p for p in (seg_by_source.get(sop), sr_path) if p is not None]
            for report in [validate.dciodvfy(p) for p in outputs] + [validate.dcentvfy([*outputs, sources[sop]])]:
                assert report.ok, report.summary()
        meta = metadata(api, study["id"])
        assert meta["BraNetStatus"] == "analysed"
        assert meta["BraNetModelVersion"] == detail["study"]["model_version"]
        assert meta["BraNetTime"].endswith("+00:00")
        assert "analysed" in meta["BraNetReason"]


def test_findings_and_outputs_are_reported(analysed, api):
    detail = analysed["US"]["detail"]
    assert [i["state"] for i in detail["instances"]] == ["ok", "ok"]
    for instance in detail["instances"]:
        image = instance["images"][0]
        assert image["sr_instance"], image
        for finding in image["findings"]:
            assert finding["label"] in ("benign", "malignant")
            assert 0.0 <= finding["p_malignant"] <= 1.0
            png = api.get(finding["thumbnail_url"])
            assert png.startswith(b"\x89PNG")
    # breast level: the MG study's two images are one L and one R view; each breast's p is its views' highest
    mg = analysed["MG"]["detail"]
    images = [image for instance in mg["instances"] for image in instance["images"]]
    assert {(b["modality"], b["laterality"]) for b in mg["breasts"]} == {("MG", "L"), ("MG", "R")}
    for breast in mg["breasts"]:
        views = [image for image in images if image["laterality"] == breast["laterality"]]
        ps = [f["p_malignant"] for image in views for f in image["findings"]]
        assert breast["images"] == len(views) and breast["findings"] == len(ps)
        assert breast["p_malignant"] == (max(ps) if ps else None)
    status = api.get_json("/branet/status")
    assert status["studies"]["analysed"] >= 2
    assert status["heavy_modules_loaded"] == [], "torch/numpy/pydicom must never load inside Orthanc"


def test_own_outputs_never_retrigger_and_new_images_are_analysed(analysed, api, servers):
    orthanc_id = analysed["US"]["id"]
    runs_before = branet_study(api, orthanc_id)["study"]["runs"]
    ignored_before = api.get_json("/branet/status")["counters"].get("ignored_events", 0)
    # the stable event caused by our own SEG/SR has come (StableAge 1 s) and was ignored
    wait_for(lambda: api.get_json("/branet/status")["counters"].get("ignored_events", 0) > 0, 30, 0.5,
             "an ignored stable event")
    first_srs = {i["ID"] for i in _outputs_of(api, orthanc_id)[0]}
    datasets = analysed["US"]["datasets"]
    extra = factory.make_us(rows=192, cols=256, seed=7, study={k: datasets[0].get(k) for k in factory.new_study()},
                            series_uid=str(datasets[0].SeriesInstanceUID), instance_number=3)
    send(servers["node"], write_files([extra], servers["tmp"] / "in-extra"))
    detail = wait_final(api, orthanc_id, runs=runs_before + 1)
    assert detail["study"]["runs"] == runs_before + 1
    assert len(detail["instances"]) == 3
    srs = {i["ID"] for i in _outputs_of(api, orthanc_id)[0]}
    assert first_srs < srs and len(srs) == 3, "only the new image was analysed; earlier SRs kept"
    assert api.get_json("/branet/status")["counters"]["ignored_events"] >= ignored_before


def test_non_breast_study_is_skipped_with_a_reason(api, servers):
    ct = factory.make_ct()
    send(servers["node"], write_files([ct], servers["tmp"] / "in-ct"))
    orthanc_id = study_id(api, str(ct.StudyInstanceUID))
    detail = wait_final(api, orthanc_id)
    assert detail["study"]["state"] == "skipped"
    assert "CT" in detail["study"]["reason"]
    assert metadata(api, orthanc_id)["BraNetStatus"] == "skipped"
    assert "SR" not in instances_by_modality(api, orthanc_id)


def test_corrupt_instance_is_recorded_while_the_others_are_analysed(api, servers):
    good, bad = small_us_study(2, seed=20)
    bad.PixelData = bad.PixelData[: len(bad.PixelData) // 2]  # Orthanc stores it; decoding it must fail
    send(servers["node"], write_files([good, bad], servers["tmp"] / "in-corrupt"))
    orthanc_id = study_id(api, str(good.StudyInstanceUID))
    detail = wait_final(api, orthanc_id)
    states = {i["sop_uid"]: i for i in detail["instances"]}
    assert states[str(good.SOPInstanceUID)]["state"] == "ok"
    assert states[str(bad.SOPInstanceUID)]["state"] == "error"
    assert states[str(bad.SOPInstanceUID)]["reason"]
    assert detail["study"]["state"] == "analysed"
    assert str(bad.SOPInstanceUID) in detail["study"]["reason"]
    srs, _ = _outputs_of(api, orthanc_id)
    assert len(srs) == 1


def test_reanalysis_replaces_earlier_outputs(analysed, api):
    orthanc_id = analysed["MG"]["id"]
    before = branet_study(api, orthanc_id)
    old_srs = {i["ID"] for i in _outputs_of(api, orthanc_id)[0]}
    answer = api.post_json(f"/branet/studies/{orthanc_id}/analyze", {})
    assert answer["decision"] in ("queued", "pending", "already-queued")
    after = wait_final(api, orthanc_id, runs=before["study"]["runs"] + 1)
    assert after["study"]["state"] == "analysed"
    new_srs = {i["ID"] for i in _outputs_of(api, orthanc_id)[0]}
    assert len(new_srs) == len(analysed["MG"]["datasets"]), "old outputs deleted, one SR per image"
    # the same model and settings make the same objects (deterministic UIDs), stored again after the deletion
    assert new_srs == old_srs
    stored_before = {o["sop_uid"]: o["stored_at"] for o in before["outputs"]}
    assert all(o["stored_at"] > stored_before[o["sop_uid"]] for o in after["outputs"])
    with pytest.raises(OrthancError) as info:
        api.post_json("/branet/studies/00000000-00000000-00000000-00000000-00000000/analyze", {})
    assert info.value.status == 404


def test_outputs_are_forwarded_to_the_pacs_and_retried_while_it_is_down(analysed, api, servers):
    pacs = servers["pacs"]
    pacs_api = pacs.api()
    for study in analysed.values():
        srs, segs = _outputs_of(api, study["id"])
        wanted = {i["MainDicomTags"]["SOPInstanceUID"] for i in srs + segs}

        def arrived(wanted=wanted, uid=str(study["datasets"][0].StudyInstanceUID)) -> bool:
            found = json.loads(pacs_api.request("POST", "/tools/find", json.dumps(
                {"Level": "Instance", "Query": {"StudyInstanceUID": uid}, "Expand": True}).encode()))
            return wanted <= {i["MainDicomTags"]["SOPInstanceUID"] for i in found}
        wait_for(arrived, 120, 0.5, "SEG + SR at the PACS")

    pacs.stop()
    (us,) = small_us_study(1, seed=40)
    send(servers["node"], write_files([us], servers["tmp"] / "in-forward"))
    orthanc_id = study_id(api, str(us.StudyInstanceUID))
    wait_final(api, orthanc_id)

    def retrying() -> dict | None:
        forwards = branet_study(api, orthanc_id)["forwards"]
        return next((f for f in forwards if f["attempts"] >= 2 and f["state"] in ("pending", "sending")
                     and f["error"]), None)
    pending = wait_for(retrying, 120, 0.5, "a forward being retried while the PACS is down")
    assert pending["destination"] == "PACS"
    assert any(f["study_id"] == orthanc_id for f in api.get_json("/branet/status")["forwarding"]["open"])

    pacs.start()
    sent = wait_for(lambda: next((f for f in branet_study(api, orthanc_id)["forwards"] if f["state"] == "sent"), None),
                    120, 0.5, "the forward to succeed once the PACS is back")
    assert sent["attempts"] >= 3
    lookup = json.loads(pacs.api().request("POST", "/tools/lookup", str(us.StudyInstanceUID).encode(), "text/plain"))
    pacs_study = next(a["ID"] for a in lookup if a["Type"] == "Study")
    assert "SR" in instances_by_modality(pacs.api(), pacs_study)


def test_sender_not_on_the_whitelist_is_refused(api, servers):
    (us,) = small_us_study(1, seed=60)
    files = write_files([us], servers["tmp"] / "in-intruder")
    result = send(servers["node"], files, calling_aet="INTRUDER", check=False)[0]
    assert result.returncode != 0 or "E:" in result.stderr
    assert "Association Rejected" in result.stderr or "rejected" in result.stderr.lower()
    wrong_host = send(servers["node"], files, calling_aet=OTHER_HOST_AET, check=False)[0]
    assert wrong_host.returncode != 0 or "E:" in wrong_host.stderr, "the AE title is bound to its host"
    wrong_case = send(servers["node"], files, calling_aet=SENDER_AET.lower(), check=False)[0]
    assert wrong_case.returncode != 0 or "E:" in wrong_case.stderr, "AE titles compare case-sensitively"
    wrong_called = subprocess.run([dcmtk_executable("storescu"), "-aet", SENDER_AET, "-aec", "NOTBRANET", "127.0.0.1",
                                   str(servers["node"].dicom_port), str(files[0])], capture_output=True, text=True)
    assert wrong_called.returncode != 0 or "E:" in wrong_called.stderr
    answer = json.loads(api.request("POST", "/tools/lookup", str(us.StudyInstanceUID).encode(), "text/plain"))
    assert answer == []


def test_secure_defaults(servers, api):
    node = servers["node"]
    data = node.data_dir
    for name in ("credentials.json", "orthanc.json"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name
    credentials = json.loads((data / "credentials.json").read_text())
    assert set(credentials) == {"username", "password"} and len(credentials["password"]) >= 32
    config = node.config
    assert config["AuthenticationEnabled"] is True and config["RemoteAccessAllowed"] is False
    assert config["DicomAlwaysAllowStore"] is False and config["DicomCheckCalledAet"] is True
    assert config["DicomCheckModalityHost"] is True and config["ExecuteLuaEnabled"] is False
    assert config["LuaScripts"] == []
    anonymous = HttpOrthanc(node.url)
    wrong = HttpOrthanc(node.url, credentials["username"], "not-the-password")
    for client in (anonymous, wrong):
        for uri in ("/system", "/branet/status", "/app/explorer.html"):
            with pytest.raises(OrthancError) as info:
                client.get(uri)
            assert info.value.status == 401, uri
    log = node.log_path.read_text(errors="replace")
    assert credentials["password"] not in log
    for identity in factory.DEFAULT_PATIENT.values():    # every study in this module is that synthetic patient
        if len(identity) > 1:
            assert identity not in log, f"patient attribute {identity!r} in the node's log"


def test_explorer_panel_in_headless_chromium(analysed, servers, tmp_path):
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed for the Explorer test (scripts/setup.sh installs it)"
    node = servers["node"]
    orthanc_id = analysed["US"]["id"]
    creds = node.credentials
    url = f"http://{creds.username}:{creds.password}@127.0.0.1:{node.http_port}/app/explorer.html#study?uuid={orthanc_id}"
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1000",
             "--virtual-time-budget=15000"]
    dom = subprocess.run([*flags, f"--user-data-dir={tmp_path / 'profile-dom'}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert 'id="branet-panel"' in html, html[-3000:]
    panel = html[html.index('id="branet-panel"'):]
    assert "analysed" in panel
    assert "branet-label" in panel and "branet-probability" in panel and " %" in panel
    assert 'class="branet-threshold"' in panel and 'class="branet-certainty"' in panel
    assert " image 1" in panel                                       # images named by their Instance Number
    assert 'class="branet-breast"' in panel and "(highest of " in panel  # the breast-level line
    uid = str(analysed["US"]["datasets"][0].StudyInstanceUID)
    assert f'href="../ohif/basic?StudyInstanceUIDs={uid}"' in panel, "the panel links the study in OHIF"
    assert 'class="branet-roi"' in panel or "none" in panel
    assert f"#instance?uuid={branet_study(node.api(), orthanc_id)['instances'][0]['images'][0]['sr_instance']}" in panel
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "orthanc-explorer-panel.png"
    shot.unlink(missing_ok=True)
    run = subprocess.run([*flags, f"--user-data-dir={tmp_path / 'profile-shot'}", f"--screenshot={shot}", url],
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-2000:]
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 20_000


def test_status_command_reads_the_running_node(servers, analysed, capsys):
    from branet_pacs.cli import main
    assert main(["orthanc", "status", "--data", str(servers["node"].data_dir)]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["service"] == "BraNet-PACS" and status["workers"][0]["alive"]
    assert main(["orthanc", "status", "--data", str(servers["node"].data_dir), "--study", analysed["US"]["id"]]) == 0
    assert json.loads(capsys.readouterr().out)["study"]["state"] == "analysed"
