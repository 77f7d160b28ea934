"""`make demo` (Orthanc-free stage): analyse the bundled sample studies with `branet analyze` and print the results.

Outputs go to demo-out/ (SEG + SR per image, results.csv).
"""

import sys
from pathlib import Path

from branet_pacs.cli import main

repo = Path(__file__).resolve().parent.parent
studies = sorted(str(p) for p in (repo / "samples").iterdir() if p.is_dir())   # not samples/README.md
sys.exit(main(["analyze", *studies, "--out", str(repo / "demo-out"), "--no-progress"]))
