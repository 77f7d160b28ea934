"""Re-analysis throughput: studies/min for N synthetic US studies (one 640x480 image each) in a real Orthanc,
with 1 and 2 workers, over DIMSE (C-GET + C-STORE) or DICOMweb, with the local engine (worker processes) or the Ray
engine (actors on a one-node Ray instance this script starts once, so Ray's own start-up is not in the figures;
actor start-up and model loading are, as worker start-up is for the local engine).

Every run uses a fresh state file and `--force`, so all studies are retrieved, analysed and stored again (the
outputs keep their SOP Instance UIDs, so the archive does not grow). A run's time is the driver's wall time from the
first query to the last store, worker start-up and model loading included. Prints medians over REPEATS runs and
the 2-vs-1 scaling ratio, plus the load average and the CPU seconds per study spent in the workers and in the driver
(wall-clock figures depend on other work on the machine; CPU seconds much less).

With `--engine ray` it also times one actor round trip carrying a study's bytes and an empty answer (Ray's own
cost per study). Worker CPU seconds are not counted for Ray actors (they are the raylet's children, not ours).

Run: .venv/bin/python benchmarks/bench_reanalyze.py [--studies 20] [--repeats 3] [--transport dimse|dicomweb]
     [--workers 1 2] [--threads N] [--models-dir DIR] [--engine local ray]
Ray on Linux binds the primary address; run it in a private network namespace to keep it on loopback:
     unshare -n sh -c 'ip link set lo up && .venv/bin/python benchmarks/bench_reanalyze.py --engine local ray'
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "support"))   # the Orthanc harness and the synthetic DICOM factory live with the tests

from branet_pacs.config import DEFAULT_MODELS_DIR, load_config  # noqa: E402
from branet_pacs.models.runtime import threads_per_process  # noqa: E402
from branet_pacs.reanalysis.archive import ConnectionOptions  # noqa: E402
from branet_pacs.reanalysis.run import ReanalyzeOptions, reanalyze, with_models_dir  # noqa: E402

import dicom_factory as factory  # noqa: E402
import pacs_harness as harness  # noqa: E402


def seed(archive: harness.Archive, studies: int) -> None:
    for index in range(studies):
        study = factory.new_study(StudyDate="20200101", AccessionNumber=f"BENCH{index:04d}")
        archive.upload([factory.make_us(480, 640, study=study, seed=index, with_regions=True)])


def cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def one_run(archive: harness.Archive, url: str, workers: int, work: Path, config, engine: str) -> dict:
    state = Path(tempfile.mkdtemp(dir=work)) / "state.sqlite"
    driver, children = cpu_seconds(resource.RUSAGE_SELF), cpu_seconds(resource.RUSAGE_CHILDREN)
    options = ReanalyzeOptions(
        source=url, workers=workers, state=state, force=True, progress=False, engine=engine,
        cpus_per_worker=threads_per_process(config.threads, workers),
        connection=ConnectionOptions(calling_aet=harness.SCU_AET, retrieve="get",
                                     username=harness.USER, password=harness.PASSWORD))
    summary = reanalyze(options, config)
    # the pool has joined its workers, so their CPU time is in RUSAGE_CHILDREN (Orthanc is still running: not yet)
    driver, children = cpu_seconds(resource.RUSAGE_SELF) - driver, cpu_seconds(resource.RUSAGE_CHILDREN) - children
    if summary.counts["failed"] or summary.interrupted:
        raise SystemExit(f"benchmark run failed: {summary.as_dict()}")
    events = [json.loads(line) for line in state.with_suffix(".jsonl").read_text().splitlines()]
    per_study = [e["seconds"] for e in events if e["event"] == "study" and "seconds" in e]
    n = max(1, summary.counts["analysed"])
    return {"seconds": summary.seconds, "analysed": summary.counts["analysed"],
            "per_study": statistics.median(per_study) if per_study else float("nan"),
            "worker_cpu": children / n if engine == "local" else float("nan"), "driver_cpu": driver / n}


def ray_round_trip(study_bytes: int, repeats: int = 50) -> float:
    """Median seconds of one actor call carrying `study_bytes` and answering a small value: what Ray adds per study
    (serialisation, object store, scheduling) on top of the analysis."""
    import time

    import ray

    @ray.remote(num_cpus=1)
    class Echo:
        def size(self, files):
            return sum(len(data) for _, data in files)

    echo = Echo.remote()
    payload = [("image.dcm", os.urandom(study_bytes))]
    ray.get(echo.size.remote(payload))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        ray.get(echo.size.remote(ray.put(payload)))
        times.append(time.perf_counter() - start)
    ray.kill(echo)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--transport", choices=["dimse", "dicomweb"], default="dimse")
    parser.add_argument("--engine", nargs="+", choices=["local", "ray"], default=["local"])
    parser.add_argument("--models-dir", default=str(DEFAULT_MODELS_DIR))
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per worker (default 0: the cores split between the workers)")
    args = parser.parse_args()
    if not harness.orthanc_available():
        raise SystemExit("Debian orthanc + orthanc-dicomweb are needed (make setup)")
    config = dataclasses.replace(with_models_dir(load_config(), args.models_dir), threads=args.threads)

    if "ray" in args.engine:
        import ray
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)

    with tempfile.TemporaryDirectory(prefix="branet-bench-reanalyze-") as tmp:
        work = Path(tmp)
        archive = harness.start_archive(work / "orthanc")
        try:
            seed(archive, args.studies)
            url = archive.dimse_url if args.transport == "dimse" else archive.dicomweb_url
            rows = []
            for engine in args.engine:
                for workers in args.workers:
                    runs = []
                    for repeat in range(args.repeats):
                        run = one_run(archive, url, workers, work, config, engine)
                        runs.append(run)
                        print(f"  {engine} workers={workers} run {repeat + 1}/{args.repeats}: {run['analysed']} "
                              f"studies in {run['seconds']:.1f} s (load average {os.getloadavg()[0]:.1f})",
                              flush=True)
                    rows.append((engine, workers, len(runs), runs[0]["analysed"],
                                 statistics.median(r["seconds"] for r in runs),
                                 statistics.median(r["analysed"] / r["seconds"] * 60.0 for r in runs),
                                 statistics.median(r["per_study"] for r in runs),
                                 statistics.median(r["worker_cpu"] for r in runs),
                                 statistics.median(r["driver_cpu"] for r in runs)))
        finally:
            archive.stop()
    trip = ray_round_trip(640 * 480 + 2000) if "ray" in args.engine else None

    threads = args.threads or "cores/workers"
    print(f"\nre-analysis over {args.transport} of {args.studies} synthetic US studies (640x480, 1 image each), "
          f"{os.cpu_count()} CPU cores, threads per worker: {threads}, load average now "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'engine':>6} {'workers':>7} {'runs':>4} {'studies':>7} {'median s':>9} {'studies/min':>11} "
          f"{'wall s/study':>12} {'worker CPU s/study':>18} {'driver CPU s/study':>18}")
    for engine, workers, runs, studies, seconds, rate, per_study, worker_cpu, driver_cpu in rows:
        print(f"{engine:>6} {workers:>7} {runs:>4} {studies:>7} {seconds:>9.1f} {rate:>11.2f} {per_study:>12.2f} "
              f"{worker_cpu:>18.2f} {driver_cpu:>18.2f}")
    print("(wall s/study: median time a worker spent on one study; CPU columns: user + system seconds per study, "
          "worker start-up and model loading included; nan: not measurable for Ray actors)")
    rates = {(row[0], row[1]): row[5] for row in rows}
    for engine in args.engine:
        if (engine, 1) in rates and (engine, 2) in rates:
            print(f"scaling {engine}: 2 vs 1 workers x{rates[engine, 2] / rates[engine, 1]:.2f}")
    for workers in args.workers:
        if ("local", workers) in rates and ("ray", workers) in rates:
            local, ray_rate = rates["local", workers], rates["ray", workers]
            print(f"ray vs local at {workers} worker(s): x{ray_rate / local:.2f} "
                  f"({60.0 / ray_rate - 60.0 / local:+.2f} s per study)")
    if trip is not None:
        print(f"ray actor round trip with one study's bytes (median of 50): {trip * 1000:.1f} ms")


if __name__ == "__main__":
    main()
