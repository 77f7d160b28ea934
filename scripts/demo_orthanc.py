#!/usr/bin/env python3
"""`make demo`: the PACS round trip on this machine.

Starts the BraNet Orthanc node in the background (`branet orthanc run`), sends the bundled sample studies from
samples/ with dcmtk's storescu, waits until each study is analysed, prints one row per finding (study, image,
finding, label, p(malignant)), the Orthanc Explorer and OHIF viewer URLs, then stops the node (or leaves it running with --keep,
which `make demo KEEP=1` passes).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from branet_pacs.orthanc.launcher import branet_node, free_port, send_files, wait_for  # noqa: E402
from branet_pacs.orthanc.rest import OrthancError  # noqa: E402
from branet_pacs.orthanc.viewer import study_url  # noqa: E402

DEMO_AET = "BRANETDEMO"
FINAL = {"analysed", "skipped", "error", "failed"}


def _port(preferred: int) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("", preferred))
            return preferred
        except OSError:
            return free_port()


def _study_ids(api, files: list[Path]) -> dict[str, str]:
    import pydicom
    uids = sorted({str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files})
    ids = {}
    for uid in uids:
        def lookup(uid=uid):
            import json
            answer = json.loads(api.request("POST", "/tools/lookup", uid.encode(), "text/plain"))
            return next((a["ID"] for a in answer if a["Type"] == "Study"), None)
        ids[uid] = wait_for(lookup, 120, 0.5, f"study {uid} in Orthanc")
    return ids


def _rows(api, orthanc_id: str) -> list[tuple[str, ...]]:
    study = api.get_json(f"/studies/{orthanc_id}")
    name = study["MainDicomTags"].get("StudyDescription") or orthanc_id[:8]
    detail = api.get_json(f"/branet/studies/{orthanc_id}")
    rows = []
    for instance in detail["instances"]:
        if instance["state"] == "skipped":
            continue
        for image in instance["images"] or [{}]:
            what = f"{image.get('modality') or instance['modality']} {image.get('laterality') or ''}".strip()
            what += f" ...{instance['sop_uid'][-8:]}"
            if image.get("error") or instance["state"] == "error":
                rows.append((name, what, "-", "error", (image.get("error") or instance["reason"])[:60]))
            elif not image.get("findings"):
                rows.append((name, what, "-", "no finding", ""))
            for finding in image.get("findings", []):
                rows.append((name, what, str(finding["index"]), finding["label"], f"{finding['p_malignant']:.3f}"))
    return rows


def _table(rows: list[tuple[str, ...]]) -> str:
    header = ("study", "image", "finding", "label", "p(malignant)")
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i]) for i in range(5)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="leave the node running (stop it with the printed kill)")
    parser.add_argument("--data", default=str(REPO / "demo-out" / "orthanc"), help="node data directory (wiped)")
    parser.add_argument("--samples", default=str(REPO / "samples"), help="folder of sample studies")
    parser.add_argument("--config", help="pipeline settings TOML (default config/branet.toml)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the results")
    args = parser.parse_args(argv)

    data = Path(args.data)
    if data.exists():
        shutil.rmtree(data)
    files = sorted(Path(args.samples).rglob("*.dcm"))
    if not files:
        print(f"no DICOM files under {args.samples}", file=sys.stderr)
        return 2
    node = branet_node(data, data.parent / "orthanc.log", dicom_port=_port(4242), http_port=_port(8042),
                       allow_senders=[f"{DEMO_AET}@127.0.0.1"], stable_age=2,
                       branet_config=Path(args.config) if args.config else None)
    print(f"starting the BraNet Orthanc node (log: {node.log_path}) ...", flush=True)
    node.start()
    keep = False
    try:
        api = node.api()
        started = time.time()
        print(f"sending {len(files)} sample instance(s) with storescu to {node.aet}@127.0.0.1:{node.dicom_port} ...",
              flush=True)
        send_files(files, node.dicom_port, node.aet, DEMO_AET)
        ids = _study_ids(api, files)
        print(f"waiting for {len(ids)} studies to be analysed (StableAge 2 s, then the pipeline) ...", flush=True)
        states = {}
        for uid, orthanc_id in ids.items():
            detail = wait_for(lambda i=orthanc_id: (d := api.get_json(f"/branet/studies/{i}"))["study"].get("state")
                              in FINAL and d, args.timeout, 1.0, f"study {orthanc_id}")
            states[orthanc_id] = detail["study"]
        elapsed = time.time() - started
        rows = [row for orthanc_id in ids.values() for row in _rows(api, orthanc_id)]
        print()
        print(_table(rows))
        print()
        for orthanc_id, study in states.items():
            print(f"study {orthanc_id}: {study['state']} ({study['model_version'] or 'no model'}) - {study['reason']}")
        print(f"round trip for {len(files)} images: {elapsed:.0f} s (send -> SEG + SR stored)")
        print(f"\nOrthanc Explorer: {node.url}/app/explorer.html  (user/password in {node.data_dir / 'credentials.json'})")
        for uid, orthanc_id in ids.items():
            print(f"  study page:     {node.url}/app/explorer.html#study?uuid={orthanc_id}")
            print(f"  OHIF viewer:    {study_url(uid, node.url)}")
        failed = [s for s in states.values() if s["state"] != "analysed"]
        keep = args.keep
        if keep:
            print(f"\nKEEP=1: the node keeps running (PID {node.pid}); stop it with: kill {node.pid}")
        else:
            print("\nThe node stops now; run `make demo KEEP=1` to leave it running and open these pages.")
        return 1 if failed else 0
    except (OrthancError, TimeoutError, RuntimeError) as exc:
        print(f"demo failed: {exc}\n(see {node.log_path})", file=sys.stderr)
        return 1
    finally:
        if not keep:
            node.stop()


if __name__ == "__main__":
    sys.exit(main())
