"""Wrappers around the offline DICOM validators: dicom3tools (dciodvfy, dcentvfy), dcmtk (dsrdump) and pixelmed
(DicomSRValidator). Each returns a ValidationReport; `validate_outputs` runs all that apply to one analysed image,
`validate_outputs_many` to several (one pixelmed start for all).

Pass/fail rules (the project's definition of "clean"):
- dciodvfy -new / dcentvfy: any line starting "Error" (or "Abort") fails; "Warning" lines are reported.
- dsrdump -v: exit status 0 and no dcmtk "E:"/"F:" log lines.
- DicomSRValidator: no line starting "Error", and the validator reached its end ("... validation complete").

pixelmed compiles a 6 MB XSLT on every start (~6-12 s on 2 cores). `pixelmed_sr_many` validates several files
with one validator when a JDK is present (Java's single-file source launcher), else falls back to one JVM per file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PIXELMED_JAR = os.environ.get("BRANET_PIXELMED_JAR", "/usr/share/java/pixelmed.jar")
# JDK >= 17.0.? limits XPath expression size under secure processing; pixelmed's compiled SR templates exceed it.
JAVA_XML_LIMITS = ("-Djdk.xml.xpathExprOpLimit=0", "-Djdk.xml.xpathExprGrpLimit=0", "-Djdk.xml.xpathTotalOpLimit=0")
# Short-lived JVM: C1 only and the serial collector halve the start-up cost of the validator (measured here).
JAVA_FAST_START = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")
TIMEOUT_S = 600

PathLike = str | os.PathLike[str]


@dataclass
class ValidationReport:
    tool: str
    ok: bool
    errors: list[str]
    warnings: list[str]
    output: str
    files: tuple[str, ...] = ()

    def summary(self) -> str:
        state = "ok" if self.ok else "FAILED"
        head = f"{self.tool}: {state} ({len(self.errors)} errors, {len(self.warnings)} warnings) {' '.join(self.files)}"
        return "\n".join([head, *("  " + e for e in self.errors)])


def _run(argv: Sequence[str]) -> tuple[int, str]:
    """Run a command; (exit status, stdout + stderr). A missing executable is exit status 127."""
    if shutil.which(argv[0]) is None:
        return 127, f"{argv[0]}: not found (install it: make setup)"
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, errors="replace", timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return 124, f"Error: {argv[0]} timed out after {TIMEOUT_S} s"
    return proc.returncode, (proc.stdout or "") + (proc.stderr or "")


def _lines(output: str, prefixes: Sequence[str]) -> list[str]:
    return [line.strip() for line in output.splitlines() if line.strip().startswith(tuple(prefixes))]


def _dicom3tools(tool: str, argv: Sequence[str], files: Sequence[PathLike]) -> ValidationReport:
    status, output = _run(argv)
    errors = _lines(output, ("Error", "Abort"))
    if status == 127:
        errors.append(output.strip())
    return ValidationReport(tool=tool, ok=not errors, errors=errors, warnings=_lines(output, ("Warning",)),
                            output=output, files=tuple(str(f) for f in files))


def dciodvfy(path: PathLike) -> ValidationReport:
    """`dciodvfy -new FILE`: IOD/module/attribute validation."""
    return _dicom3tools("dciodvfy", ["dciodvfy", "-new", str(path)], [path])


def dcentvfy(paths: Sequence[PathLike]) -> ValidationReport:
    """`dcentvfy FILE...`: patient/study/series attributes agree across the files (give outputs and sources)."""
    return _dicom3tools("dcentvfy", ["dcentvfy", *map(str, paths)], paths)


def dsrdump(path: PathLike) -> ValidationReport:
    """`dsrdump -v FILE`: dcmtk parses the SR document tree (checks value types and relationships)."""
    status, output = _run(["dsrdump", "-v", str(path)])
    errors = _lines(output, ("E:", "F:"))
    if status != 0 and not errors:
        errors.append(f"dsrdump exit status {status}")
    return ValidationReport(tool="dsrdump", ok=status == 0 and not errors, errors=errors,
                            warnings=_lines(output, ("W:",)), output=output, files=(str(path),))


def _pixelmed_report(output: str, path: PathLike, status: int) -> ValidationReport:
    errors = _lines(output, ("Error",))
    if "validation complete" not in output.lower():
        errors.append(f"DicomSRValidator did not complete (exit status {status})")
    return ValidationReport(tool="pixelmed DicomSRValidator", ok=not errors, errors=errors,
                            warnings=_lines(output, ("Warning",)), output=output, files=(str(path),))


def pixelmed_sr(path: PathLike) -> ValidationReport:
    """pixelmed's DicomSRValidator: SR IOD and template (TID) conformance."""
    status, output = _run(["java", *JAVA_FAST_START, *JAVA_XML_LIMITS, "-cp", PIXELMED_JAR,
                           "com.pixelmed.validate.DicomSRValidator", str(path)])
    return _pixelmed_report(output, path, status)


_BATCH_MARK = "=====BRANET-FILE "
_BATCH_SOURCE = """
import com.pixelmed.validate.DicomSRValidator;
public class BranetBatchSRValidator {
    public static void main(String[] args) throws Exception {
        DicomSRValidator validator = new DicomSRValidator();
        for (String name : args) {
            System.out.println("%s" + name);
            // the same options DicomSRValidator.main uses by default
            System.out.print(validator.validate(name, false, true, false, false, false));
            System.out.println();
        }
    }
}
""" % _BATCH_MARK


def _has_jdk() -> bool:
    return shutil.which("javac") is not None


def pixelmed_sr_many(paths: Sequence[PathLike]) -> list[ValidationReport]:
    """DicomSRValidator over several files, compiling pixelmed's templates once (needs a JDK; else one JVM each)."""
    paths = list(paths)
    if len(paths) <= 1 or not _has_jdk():
        return [pixelmed_sr(p) for p in paths]
    with tempfile.TemporaryDirectory(prefix="branet-pixelmed-") as tmp:
        source = Path(tmp) / "BranetBatchSRValidator.java"
        source.write_text(_BATCH_SOURCE)
        status, output = _run(["java", *JAVA_FAST_START, *JAVA_XML_LIMITS, "-cp", PIXELMED_JAR, str(source), *map(str, paths)])
    chunks = output.split(_BATCH_MARK)
    if len(chunks) != len(paths) + 1:  # the batch itself failed: fall back, one JVM per file
        return [pixelmed_sr(p) for p in paths]
    reports = []
    for path, chunk in zip(paths, chunks[1:]):
        name, _, body = chunk.partition("\n")
        assert name.strip() == str(path), (name, path)
        reports.append(_pixelmed_report(body, path, status))
    return reports


def validate_outputs(seg_path: PathLike | None, sr_path: PathLike,
                     source_paths: Sequence[PathLike]) -> list[ValidationReport]:
    """Every check for one analysed image: dciodvfy on SEG and SR, dcentvfy across outputs and sources,
    dsrdump and DicomSRValidator on the SR."""
    return validate_outputs_many([(seg_path, sr_path, source_paths)])[0]


def validate_outputs_many(
        items: Sequence[tuple[PathLike | None, PathLike, Sequence[PathLike]]]) -> list[list[ValidationReport]]:
    """`validate_outputs` for several analysed images (seg_path or None, sr_path, source_paths), validating all
    the SRs with one DicomSRValidator start when a JDK is present."""
    results = []
    for seg_path, sr_path, source_paths in items:
        outputs = [p for p in (seg_path, sr_path) if p is not None]
        reports = [dciodvfy(p) for p in outputs]
        reports.append(dcentvfy([*outputs, *source_paths]))
        reports.append(dsrdump(sr_path))
        results.append(reports)
    for reports, pixelmed in zip(results, pixelmed_sr_many([sr for _, sr, _ in items])):
        reports.append(pixelmed)
    return results
