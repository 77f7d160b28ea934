"""`make demo` (Orthanc-free stage): analyse the bundled sample studies with `branet analyze` and print the results.

Outputs go to demo-out/ (SEG + SR per image, results.csv).
"""

import sys
from pathlib import Path

from branet_pacs.cli import main

repo = Path(__file__).resolve().parent.parent
sys.exit(main(["analyze", str(repo / "samples"), "--out", str(repo / "demo-out"), "--no-progress"]))
