"""`branet agreement`: reader-study statistics (the BraNet paper's Table 7).

Input CSVs: a header row with `file,label`, one row per case; label benign|malignant (also B/M, 0/1;
malignant = positive). Cases are matched on `file`; only cases present in every given CSV are counted (the
others are reported as unmatched).

Cohen's kappa: κ = (p_o − p_e) / (1 − p_e). Its p-value tests H0: κ = 0 with the normal approximation of
Fleiss, Cohen & Everitt (1969), "Large sample standard errors of kappa and weighted kappa", Psychol. Bull.
72:323-327: under H0

    SE_0(κ) = sqrt( p_e + p_e² − Σ_i p_i. p_.i (p_i. + p_.i) ) / ( (1 − p_e) √n ),   z = κ / SE_0,

two-sided p = 2 (1 − Φ(|z|)). The 95 % confidence interval uses Cohen's (1960) large-sample
SE(κ) = sqrt( p_o (1 − p_o) / n ) / (1 − p_e).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from scipy.stats import norm

from branet_pacs.datasets.cases import normalise_label

POSITIVE = "malignant"


def read_ratings(path: str | Path) -> dict[str, int]:
    """{file: 1 if malignant else 0} from a `file,label` CSV."""
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        fields = {name.strip().lower(): name for name in reader.fieldnames or ()}
        if "file" not in fields or "label" not in fields:
            raise ValueError(f"{path}: expected a header with columns file,label (got {reader.fieldnames})")
        out: dict[str, int] = {}
        for row in reader:
            name = row[fields["file"]].strip()
            if not name:
                continue
            label = normalise_label(row[fields["label"]])
            if label not in ("benign", "malignant"):
                raise ValueError(f"{path}: label {row[fields['label']]!r} for {name} is not benign/malignant")
            if name in out:
                raise ValueError(f"{path}: {name} rated twice")
            out[name] = int(label == POSITIVE)
    return out


def kappa_test(a: list[int], b: list[int]) -> dict:
    """Cohen's κ of two binary raters with the H0 z-test and a 95 % CI (see module docstring)."""
    n = len(a)
    if n == 0 or n != len(b):
        raise ValueError("kappa needs two equally long, non-empty rating lists")
    po = sum(x == y for x, y in zip(a, b)) / n
    pa = [sum(1 for x in a if x == k) / n for k in (0, 1)]     # p_i. (rater A marginals)
    pb = [sum(1 for y in b if y == k) / n for k in (0, 1)]     # p_.i (rater B marginals)
    pe = sum(pa[k] * pb[k] for k in (0, 1))
    if math.isclose(pe, 1.0):
        return {"kappa": float("nan"), "p_value": float("nan"), "z": float("nan"), "se0": float("nan"),
                "ci95": [float("nan"), float("nan")], "observed_agreement": po, "expected_agreement": pe}
    kappa = (po - pe) / (1 - pe)
    se0 = math.sqrt(max(pe + pe ** 2 - sum(pa[k] * pb[k] * (pa[k] + pb[k]) for k in (0, 1)), 0.0)) \
        / ((1 - pe) * math.sqrt(n))
    z = kappa / se0 if se0 > 0 else float("inf") * (1 if kappa > 0 else -1 if kappa < 0 else 0)
    p = float(2 * norm.sf(abs(z))) if not math.isnan(z) else float("nan")
    se = math.sqrt(po * (1 - po) / n) / (1 - pe)
    return {"kappa": kappa, "p_value": p, "z": z, "se0": se0, "ci95": [kappa - 1.96 * se, kappa + 1.96 * se],
            "observed_agreement": po, "expected_agreement": pe}


def reader_metrics(rating: list[int], truth: list[int]) -> dict:
    """Accuracy, sensitivity, specificity, PPV, NPV and prevalence of one reader against truth."""
    tp = sum(1 for r, t in zip(rating, truth) if r == 1 and t == 1)
    tn = sum(1 for r, t in zip(rating, truth) if r == 0 and t == 0)
    fp = sum(1 for r, t in zip(rating, truth) if r == 1 and t == 0)
    fn = sum(1 for r, t in zip(rating, truth) if r == 0 and t == 1)
    n = len(truth)

    def ratio(x: int, y: int) -> float:
        return x / y if y else float("nan")

    return {"n": n, "tp": tp, "tn": tn, "fp": fp, "fn": fn, "accuracy": ratio(tp + tn, n),
            "sensitivity": ratio(tp, tp + fn), "specificity": ratio(tn, tn + fp), "ppv": ratio(tp, tp + fp),
            "npv": ratio(tn, tn + fn), "prevalence": ratio(tp + fn, n),
            "kappa_vs_truth": kappa_test(rating, truth)["kappa"]}


def agreement_report(a_path: str | Path, b_path: str | Path, truth_path: str | Path | None = None) -> dict:
    sources = {"A": read_ratings(a_path), "B": read_ratings(b_path)}
    if truth_path is not None:
        sources["truth"] = read_ratings(truth_path)
    common = sorted(set.intersection(*(set(s) for s in sources.values())))
    if not common:
        raise ValueError("the CSVs have no file in common")
    unmatched = {key: len(set(s) - set(common)) for key, s in sources.items()}
    a = [sources["A"][f] for f in common]
    b = [sources["B"][f] for f in common]
    report = {"files": {"A": str(a_path), "B": str(b_path), "truth": str(truth_path) if truth_path else None},
              "n": len(common), "unmatched": unmatched,
              "percent_agreement": 100.0 * sum(x == y for x, y in zip(a, b)) / len(common),
              "kappa": kappa_test(a, b),
              "method": "Cohen's kappa; p-value: two-sided z-test of H0 kappa = 0 with the Fleiss, Cohen & "
                        "Everitt (1969) standard error; 95% CI with Cohen's (1960) large-sample SE"}
    if truth_path is not None:
        truth = [sources["truth"][f] for f in common]
        report["readers"] = {"A": reader_metrics(a, truth), "B": reader_metrics(b, truth)}
    return report


def format_report(report: dict) -> str:
    k = report["kappa"]
    lines = [f"cases: {report['n']} (unmatched: " + ", ".join(f"{key} {n}" for key, n in report["unmatched"].items())
             + ")",
             f"percent agreement: {report['percent_agreement']:.1f} %",
             f"Cohen's kappa: {k['kappa']:.4f} (95% CI {k['ci95'][0]:.4f} to {k['ci95'][1]:.4f}), "
             f"z = {k['z']:.3f}, p = {k['p_value']:.3g}"]
    if "readers" in report:
        names = ("accuracy", "sensitivity", "specificity", "ppv", "npv", "prevalence")
        lines.append("reader  " + "  ".join(f"{n:>11}" for n in names))
        for reader, values in report["readers"].items():
            lines.append(f"{reader:<7} " + "  ".join(f"{values[n]:>11.4f}" for n in names))
    return "\n".join(lines)
