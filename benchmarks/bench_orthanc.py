"""The Orthanc node under load: latency from the stable event to the SR stored, throughput over a 50-image burst,
and the memory of Orthanc and of the worker. Prints a table.

A real node (`branet orthanc run`, repository models, 1 worker, StableAge 2 s) on free loopback ports; studies are
synthetic (tests/dicom_factory.py): 640x480 US and 1024x832 12-bit MG, sent with storescu.

- latency: single-image studies sent one after another; from the moment the stable event queued the study (the
  STABLE_STUDY callback wakes the change feed) to the moment its SR was stored in Orthanc; also send -> SR stored
  (which includes StableAge);
- bursts: 50 US images in 10 studies of 5, and 30 one-image US studies, each sent in one association; images/min and
  studies/min from the first study queued to the last study finished;
- where the time goes: the worker's per-image steps (fetch over REST, decode + ingest, pipeline stages,
  thumbnails + outbox, store over REST), medians over the burst;
- memory: VmRSS and VmHWM (peak) from /proc of the Orthanc process and of the worker after the burst.

Run: .venv/bin/python benchmarks/bench_orthanc.py [--latency-us 5] [--latency-mg 3] [--burst 50] [--burst-studies 30] [--config TOML]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "support"))

import pydicom  # noqa: E402

from branet_pacs.orthanc.launcher import branet_node, free_port, send_files, wait_for  # noqa: E402

import dicom_factory as factory  # noqa: E402

SENDER = "BENCH"
FINAL = {"analysed", "skipped", "error", "failed"}


def _write(datasets, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [factory.write(ds, folder / f"{ds.SOPInstanceUID}.dcm") for ds in datasets]


def _study(modality: str, n: int, seed: int) -> list[pydicom.Dataset]:
    study, series = factory.new_study(), pydicom.uid.generate_uid()
    if modality == "US":
        return [factory.make_us(480, 640, seed=seed + i, study=study, series_uid=series, instance_number=i + 1)
                for i in range(n)]
    return [factory.make_mg(1024, 832, seed=seed + i, study=study, series_uid=series, instance_number=i + 1,
                            laterality="L" if i % 2 == 0 else "R") for i in range(n)]


def _orthanc_id(api, uid: str) -> str:
    import json

    def lookup():
        answer = json.loads(api.request("POST", "/tools/lookup", uid.encode(), "text/plain"))
        return next((a["ID"] for a in answer if a["Type"] == "Study"), None)
    return wait_for(lookup, 120, 0.05, f"study {uid}")


def _final(api, orthanc_id: str, timeout: float = 3600) -> dict:
    return wait_for(lambda: (d := api.get_json(f"/branet/studies/{orthanc_id}"))["study"].get("state") in FINAL and d,
                    timeout, 0.1, f"study {orthanc_id}")


def _sr_stored_at(detail: dict) -> float:
    return max(o["stored_at"] for o in detail["outputs"] if o["kind"] == "SR" and o["stored_at"])


def _memory(pid: int) -> tuple[float, float]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024.0
    return values["VmRSS"], values["VmHWM"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency-us", type=int, default=5, help="single-image US studies for the latency")
    parser.add_argument("--latency-mg", type=int, default=3, help="single-image MG studies for the latency")
    parser.add_argument("--burst", type=int, default=50, help="US images in the burst (studies of 5)")
    parser.add_argument("--burst-studies", type=int, default=30, help="one-image US studies in the study burst")
    parser.add_argument("--config", help="pipeline settings TOML (default config/branet.toml)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-orthanc-") as tmp_name:
        tmp = Path(tmp_name)
        node = branet_node(tmp / "node", tmp / "node.log", dicom_port=free_port(), http_port=free_port(),
                           allow_senders=[f"{SENDER}@127.0.0.1"], stable_age=2,
                           branet_config=Path(args.config) if args.config else None)
        node.start()
        try:
            api = node.api()
            wait_for(lambda: all(w["alive"] for w in api.get_json("/branet/status")["workers"]), 120, 0.2, "workers")
            rows = []
            for modality, count in (("US", args.latency_us), ("MG", args.latency_mg)):
                latencies, end_to_end = [], []
                for i in range(count):
                    datasets = _study(modality, 1, seed=1000 + i)
                    files = _write(datasets, tmp / f"lat-{modality}-{i}")
                    sent = time.time()
                    send_files(files, node.dicom_port, node.aet, SENDER)
                    detail = _final(api, _orthanc_id(api, str(datasets[0].StudyInstanceUID)))
                    if detail["study"]["state"] != "analysed":
                        raise RuntimeError(f"{modality} study not analysed: {detail['study']['reason']}")
                    stored = _sr_stored_at(detail)
                    latencies.append(stored - detail["study"]["queued_at"])
                    end_to_end.append(stored - sent)
                rows.append((f"latency stable -> SR stored, {modality} (median of {count})",
                             f"{statistics.median(latencies):.2f} s",
                             f"min {min(latencies):.2f} / max {max(latencies):.2f}"))
                rows.append((f"latency send -> SR stored, {modality} (StableAge 2 s)",
                             f"{statistics.median(end_to_end):.2f} s", ""))

            details = []
            for per_study, count, label in ((5, max(1, args.burst // 5), "images"),
                                            (1, args.burst_studies, "studies")):
                if count < 1:
                    continue
                studies = [_study("US", per_study, seed=2000 + 10 * i + 5000 * per_study) for i in range(count)]
                files = [p for i, s in enumerate(studies) for p in _write(s, tmp / f"burst-{per_study}-{i}")]
                sent = time.time()
                send_files(files, node.dicom_port, node.aet, SENDER)
                burst = [_final(api, _orthanc_id(api, str(s[0].StudyInstanceUID))) for s in studies]
                done = time.time()
                first_queued = min(d["study"]["queued_at"] for d in burst)
                last_finished = max(d["study"]["finished_at"] for d in burst)
                ok = [d for d in burst if d["study"]["state"] == "analysed"]
                analysed = sum(len(d["instances"]) for d in ok) if label == "images" else len(ok)
                rows.append((f"burst: {len(files)} US images in {len(studies)} studies",
                             f"{analysed * 60.0 / (last_finished - first_queued):.1f} {label}/min",
                             f"first queued -> last done {last_finished - first_queued:.0f} s; "
                             f"send -> all done {done - sent:.0f} s"))
                details += burst

            steps: dict[str, list[float]] = {}
            for detail in details:
                for instance in detail["instances"]:
                    for step, seconds in instance.get("timings", {}).items():
                        steps.setdefault(step, []).append(seconds)
            service_steps = ("fetch", "decode", "outputs", "store")
            for step in sorted(steps, key=lambda k: (k.startswith("pipeline."), k)):
                if step == "analyse":
                    continue
                kind = "service" if step in service_steps else "pipeline"
                rows.append((f"  per image (burst median): {step}", f"{statistics.median(steps[step]):.3f} s", kind))
            if steps.get("analyse"):
                analyse = statistics.median(steps["analyse"])
                service = sum(statistics.median(steps[k]) for k in service_steps if k in steps)
                rows.append(("  per image: analysis (pipeline) vs service steps", f"{analyse:.2f} s",
                             f"service {service:.2f} s = {100 * service / (analyse + service):.0f} % of the worker's "
                             "time per image"))

            status = api.get_json("/branet/status")
            orthanc_rss, orthanc_peak = _memory(node.pid)
            rows.append(("RSS Orthanc (with plugin)", f"{orthanc_rss:.0f} MiB", f"peak {orthanc_peak:.0f} MiB"))
            for worker in status["workers"]:
                rss, peak = _memory(worker["pid"])
                rows.append((f"RSS worker {worker['slot']} (models loaded)", f"{rss:.0f} MiB", f"peak {peak:.0f} MiB"))
            versions = sorted({d["study"]["model_version"] for d in details})
        finally:
            node.stop()

    width = max(len(r[0]) for r in rows)
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"\nBraNet Orthanc node benchmark (1 worker, {', '.join(versions)}; {os.cpu_count()} CPUs, "
          f"load average at the end {' '.join(load)})")
    print(f"{'measure':{width}}  {'value':>16}  notes")
    print(f"{'-' * width}  {'-' * 16}  -----")
    for name, value, note in rows:
        print(f"{name:{width}}  {value:>16}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
