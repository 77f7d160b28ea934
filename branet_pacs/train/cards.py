"""Model cards: MODEL_CARD.md for the classifier (`write_model_card`) and the lesion detector
(`write_detector_card`), written from their metrics documents (so a card can be regenerated from metrics.json)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from branet_pacs.datasets.readers import citation_of
from branet_pacs.evaluation import metrics as M
from branet_pacs.imaging.roi import (DEFAULT_LESION_BOX, DEFAULT_WINDOW, LESION_BOX_DESCRIPTIONS, ROI_SIZE,
                                    WINDOW_DESCRIPTIONS)
from branet_pacs.models.feature_head import EQUAL_WEIGHT

SEGMENTATION_REPORT = "proposals_litemedsam.json"   # written by `branet evaluate-proposals`, read into the card
MIN_SCORE_REASON = 'fixed in advance as "more likely lesion than not", not tuned'   # `train-detector --min-score` default

# What each dataset's classifier ROIs are, after its citation.
DATASET_NOTES = {
    "busi": ("Benign and malignant images of the 80 % development split; one ROI per lesion mask; images with "
             "identical pixels share a fold group."),
    "mias": ("One ROI per abnormality with a centre (centre ± radius, at least 24 px), NORM films and lesions without "
             "a centre excluded; folds grouped by patient (left/right films of one woman never split)."),
    "cbis-ddsm": ("Mass ROIs of the official training split held here (the official test split is not): one ROI per "
                  "mass from its box (lesions.csv); the copies here were squashed to 800x800, so their rows are "
                  "stretched back by 1.70 (the median width/height of the mass boxes) before cutting (docs/"
                  "mammography.md); folds grouped by patient (the CC and MLO views of one mass never split)."),
}


def _dataset_text(dataset: str) -> str:
    """Citation and description of each site ("busi+bus-uclm": both)."""
    return "\n\n".join(f"{citation_of(name)} {DATASET_NOTES.get(name, '')}".strip() for name in dataset.split("+"))


def _sites_text(doc: dict, loso: dict | None) -> str:
    """The pooled threshold at each site (out of fold), and the leave-one-site-out scores when measured."""
    by_site = doc.get("oof_by_site") or {}
    text = ""
    if len(by_site) > 1:
        rows = "\n".join(f"| {site} | {m['n']} | {_fmt(m['roc_auc'])} | {_fmt(m['sensitivity'])} | "
                          f"{_fmt(m['specificity'])} | {_fmt(m['balanced_accuracy'])} |" for site, m in by_site.items())
        text += f"""
## Site by site
Out of fold, at the one threshold {doc['threshold']:.4f}:

| site | ROIs | ROC AUC | sensitivity | specificity | balanced acc. |
|---|---|---|---|---|---|
{rows}
"""
    if loso:
        rows = "\n".join(f"| {site} | {'+'.join(r['trained_on'])} | {r['n']} | {_fmt(r['roc_auc'])} | "
                          f"{_fmt(r['balanced_accuracy'])} | {_fmt(r['sensitivity'])} | {_fmt(r['specificity'])} | "
                          f"{_fmt(r.get('cnn_only_roc_auc'))} | {_fmt(r.get('feature_head_only_roc_auc'))} |"
                          for site, r in loso["held_out"].items())
        text += f"""
## Leave one site out
The same recipe trained without a site (its own grouped CV choosing epochs and threshold), then scored once on
the site left out — a hospital it never saw:

| held-out site | trained on | ROIs | ROC AUC | balanced acc. | sensitivity | specificity | AUC CNN alone | AUC head alone |
|---|---|---|---|---|---|---|---|---|
{rows}
"""
    return text


def _fmt(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _window_text(data: dict) -> str:
    window = data.get("window", DEFAULT_WINDOW)
    return f"put on {WINDOW_DESCRIPTIONS[window]} (window \"{window}\")"


def _lesion_box_text(data: dict) -> str:
    kind = data.get("lesion_box", DEFAULT_LESION_BOX)
    return f"{LESION_BOX_DESCRIPTIONS[kind]} (lesion_box \"{kind}\")"


def _views_text(settings: dict) -> str:
    views = settings.get("margin_views") or ()
    if not views:
        return ""
    return (f"\nOn automatically found boxes the pipeline averages p(malignant) over ROIs cut at margins "
            f"{', '.join(str(v) for v in views)} (manifest `tta_margins`): the score then depends less on the "
            f"box's error.")


def _recipe_text(settings: dict) -> str:
    jitter = float(settings.get("roi_jitter", 0.0))
    text = f" with ROI jitter {jitter} (zoom and shift as large as an automatic box's error)" if jitter > 0 else ""
    if settings.get("scanner_aug"):
        text += ", scanner augmentation (blur, lower resolution, depth-dependent gain, wider gamma and contrast)"
    elif settings.get("intensity_aug"):
        text += ", wider gamma and contrast augmentation (film density and exposure)"
    if float(settings.get("mixup", 0.0)) > 0:
        text += f", mixup Beta({settings['mixup']}, {settings['mixup']})"
    if float(settings.get("ema", 0.0)) > 0:
        text += f", scoring and shipping an exponential moving average of the weights (decay {settings['ema']} per step)"
    return text


def _init_text(settings: dict, description: str | None = None) -> str:
    if not settings.get("init"):
        return "random initialisation — no ImageNet weights"
    if description:      # a `branet pretrain` backbone: say what it learned from
        return f"initialised from {settings['init']} ({description}; no ImageNet weights)"
    return f"initialised from {settings['init']} (its first network when it is an ensemble; no ImageNet weights)"


def _c(settings: dict) -> str:
    c = settings["feature_head_c"]
    return " / ".join(str(v) for v in c) if isinstance(c, (list, tuple)) else str(c)


def _head_inputs_text(settings: dict) -> str:
    inputs = settings.get("feature_head_inputs", ["litemedsam"])
    text = ("LiteMedSAM's image embedding pooled inside the lesion mask and in a ring around it (512 numbers; the "
            "pipeline computes the embedding for segmentation anyway)")
    extra = []
    if "litemedsam-crop" in inputs:
        extra.append("the same pooling with LiteMedSAM encoding a square crop around the lesion (2.5x its box; "
                     "`models.segmenter.lesion_crop_embedding`, one more encoder pass per lesion)")
    if "litemedsam-crop-stages" in inputs:
        extra.append("the maps of LiteMedSAM's TinyViT layers 2 and 3 (160 + 320 channels) on the same crop, pooled "
                     "the same way (960 numbers, from the same encoder pass; "
                     "`models.segmenter.lesion_crop_stage_embedding`)")
    if "lesion-descriptors" in inputs:
        extra.append("53 hand-made descriptors on the lesion box (`branet_pacs.imaging.lesion_descriptors`: density "
                     "against the surrounding tissue, edge sharpness, radial vs tangential gradient energy for "
                     "spicules, GLCM and LBP texture, in a size-normalised crop)")
    if extra:
        text += (", and, each as a further block with its own regression (the head's logit is the blocks' mean), "
                 + "; ".join(extra))
    return text


def _combine_text(doc: dict) -> str:
    weight = doc.get("cnn_weight") or {"shipped": EQUAL_WEIGHT, "method": "fixed"}
    w = weight["shipped"]
    if weight["method"] == "fixed" and w == EQUAL_WEIGHT:
        return "the mean of the CNN's and the head's logits"
    text = f"sigmoid({w} x the CNN's logit + {round(1 - w, 2)} x the head's logit)"
    if weight["method"] != "fixed":
        text += (f", the CNN weight picked on the out-of-fold predictions (each fold's figures below with the weight "
                 f"picked on the other folds: {', '.join(str(v) for v in weight['per_fold'])})")
    if w == 0:
        text += (" — so the head alone decides: on these data the CNN added nothing to it out of fold (it still runs, "
                 "and a retrained CNN that helps gets a weight again)")
    return text


def _head_text(doc: dict) -> str:
    parts = doc.get("oof_parts")
    if not parts:
        return ""
    st = doc["settings"]
    return f"""

**Feature head.** Beside the CNN, `feature_head.safetensors`: standardisation + class-balanced logistic regression
(L2, C = {_c(st)}) on {_head_inputs_text(st)}. p(malignant) is {_combine_text(doc)}; the threshold and
every figure below are those of the combination. Out of fold, each alone: CNN
ROC AUC {_fmt(parts['cnn_only']['roc_auc'])}, head {_fmt(parts['feature_head_only']['roc_auc'])}, combined
{_fmt(doc['oof']['roc_auc'])}."""


def write_model_card(path: Path, doc: dict, loso: dict | None = None) -> Path:
    """MODEL_CARD.md from the metrics document (can be re-run on an existing metrics.json), with the
    leave-one-site-out report when one was measured for the recipe."""
    s, data, st = doc["summary"], doc["data"], doc["settings"]
    side = data.get("roi_size", ROI_SIZE)
    rows = "\n".join(f"| {name.replace('_', ' ')} | {_fmt(s[name]['mean'])} ± {_fmt(s[name]['sd'])} | "
                      f"{_fmt(doc['oof'][name])} |" for name in M.METRIC_NAMES)
    folds = "\n".join(f"| {f['fold']} | {f['n']} ({f['n_malignant']} m) | {_fmt(f['roc_auc'])} | "
                       f"{_fmt(f['balanced_accuracy'])} | {_fmt(f['sensitivity'])} | {_fmt(f['specificity'])} | "
                       f"{f['best_epoch']} / {f['epochs_run']} |" for f in doc["folds"])
    wall = doc["wall_seconds"]
    cm = doc["oof"]["confusion_matrix"]
    text = f"""# {doc['name']} — {doc['modality']} benign/malignant ROI classifier (version {doc['version']})

**Research use only. Not a medical device; not for diagnosis.**

## Model
ResNet18 (torchvision architecture, {_init_text(st, doc.get('init_description'))}), 1-channel {side}×{side} input,
dropout {st['dropout']} before a 2-class head (benign, malignant). Output: p(malignant) = softmax of the head.
Weights: `weights.safetensors` (fp16; largest probability change vs fp32 on 64 training ROIs:
{doc['final']['fp16_max_probability_change']:.2e}). Test-time augmentation (left-right flip): {'on' if st['tta'] else 'off'}.{_head_text(doc)}

Input: a ROI made by `branet_pacs.imaging.roi.extract_roi` — the lesion box made square, widened by a margin of
{data['margin']} of its side, padded with black outside the image, {_window_text(data)},
resized to {side}×{side} and mapped to [-1, 1]. The pipeline cuts its ROIs with the same code, margin and window,
around {_lesion_box_text(data)}.{_views_text(st)}

## Data
{_dataset_text(data['dataset'])}

{data['n']} ROIs ({data['n_malignant']} malignant, {data['n'] - data['n_malignant']} benign) in {data['n_groups']}
groups. Synthetic ROIs: {data['synthetic_dir'] or 'none'}.

## Training
{st['folds']}-fold {'stratified group' if data['grouped'] else 'stratified'} cross-validation (scikit-learn,
split seed {st['seed'] if st.get('split_seed') is None else st['split_seed']}, initialisation seed {st['seed']}). Per fold: AdamW lr {st['lr']}, weight decay {st['weight_decay']}, one warm-up epoch then
cosine decay over a cap of {st['epochs']} epochs, batch {st['batch_size']}, class-weighted cross-entropy,
augmentation for {doc['modality']}{_recipe_text(st)} (see `branet_pacs.train.augment.augment_settings`),
{doc['precision']} autocast on {doc['device']}; early stopping on validation ROC AUC (patience {st['patience']}),
best-AUC weights kept. The shipped network was then retrained on all ROIs with the same schedule for
{doc['final']['epochs']} epochs (median best epoch of the folds).
Initial weights: {st.get('init') or 'random (no pretraining)'}.
Training time on this machine (sum of epoch times, 2 shared CPU cores): cross-validation
{wall['cross_validation'] / 60:.1f} min, final model {wall['final'] / 60:.1f} min.

## Threshold
{doc['threshold']:.4f} on p(malignant): {doc['threshold_method']}. Chosen on validation folds only.
Per-fold metrics below use the threshold chosen on the other folds' out-of-fold predictions.
Each fold's model is its best-validation-AUC epoch, so fold AUCs carry a small selection optimism; a model
stopped blindly at {doc['final']['epochs']} epochs (as the shipped one is) scored validation AUCs of
{', '.join(_fmt(v) for v in doc['final']['fold_val_auc_at_final_epochs'])} (mean
{_fmt(float(np.nanmean(doc['final']['fold_val_auc_at_final_epochs'])))}, single forward pass).

## Cross-validation metrics
| metric | mean ± sd over folds | pooled out-of-fold |
|---|---|---|
{rows}

Pooled out-of-fold confusion matrix (rows truth, columns predicted): benign [{cm[0][0]}, {cm[0][1]}],
malignant [{cm[1][0]}, {cm[1][1]}].

| fold | validation ROIs | ROC AUC | balanced acc. | sensitivity | specificity | best / run epochs |
|---|---|---|---|---|---|---|
{folds}

Figures: `history.png` (loss/accuracy per epoch), `roc.png`, `confusion_matrix.png`.
{_sites_text(doc, loso)}
## Intended use and limitations
Research only: ranking lesion ROIs that a reader or the lesion detector already found. It does not find lesions.
Cross-validation estimates come from {data['dataset'].replace('+', ' and ')} and are optimistic for other
scanners, sites and populations; the threshold is tuned for balanced sensitivity/specificity on these data and
should be re-chosen locally. The ROI must be cut with the same code and margin. The shipped network was
retrained on all data, so it has no held-out estimate of its own; the CV figures describe the procedure.
"""
    path.write_text(text)
    return path


# --- lesion detector -----------------------------------------------------------------------------------------

def _segmentation_text(report: dict | None) -> str:
    if not report:
        return ("Not measured yet: `branet evaluate-proposals` writes the LiteMedSAM Dice from the out-of-fold top "
                f"proposal vs the true box ({SEGMENTATION_REPORT}).")
    key = next(k for k in report if k.startswith("dice_top_proposal_mean_zero_below_"))
    by = "; ".join(f"{c}: true box {_fmt(v['dice_true_box_mean'])}, top proposal {_fmt(v['dice_top_proposal_mean'])}"
                   f" (n={v['n']})" for c, v in report.get("by_category", {}).items())
    sample = (f"all {report['images']} lesion images" if report["images"] == report["sampled_from"] else
              f"{report['images']} lesion images (random sample of {report['sampled_from']}, seed {report['seed']})")
    return (f"LiteMedSAM on {sample}, Dice against the ground-truth mask: "
            f"**true box {_fmt(report['dice_true_box_mean'])}"
            f"**, **top out-of-fold proposal {_fmt(report['dice_top_proposal_mean'])}** (median "
            f"{_fmt(report['dice_top_proposal_median'])}); counting images whose top proposal scores below "
            f"{key.rsplit('_', 1)[-1]} as 0: {_fmt(report[key])}. {by}.")


def _detector_sites_text(metrics: dict, threshold: float) -> str:
    by_site = metrics.get("out_of_fold_by_site")
    if not by_site:
        return ""
    rows = "\n".join(
        f"| {site} | {m['images']} | {_fmt(m['at_min_score']['lesion'].get('hit_rate_iou50'))} | "
        f"{_fmt(m['top1_any_score']['lesion'].get('top1_hit_rate_iou50'))} | "
        f"{_fmt(m['at_min_score'].get('normal', {}).get('false_proposals_per_normal_image'))} |"
        for site, m in by_site.items())
    return f"""
### Site by site (out of fold)
| site | images | hit@0.5 (min_score {threshold}) | top-1 hit@0.5 | false/normal img |
|---|---|---|---|---|
{rows}
"""


def write_detector_card(path: Path, name: str, version: str, modality: str, kind: str, metrics: dict,
                        segmentation: dict | None = None) -> Path:
    """The lesion detector's MODEL_CARD.md from its metrics document (and the LiteMedSAM report when present)."""
    cv = metrics["cross_validation"]
    threshold = metrics["recommended_min_score"]
    reason = metrics.get("recommended_min_score_reason") or MIN_SCORE_REASON
    rows = []
    for m in metrics["out_of_fold"]["by_min_score"]:
        lesion, normal = m["lesion"], m.get("normal", {})
        rows.append(f"| {m['min_score']:.1f} | {_fmt(lesion.get('hit_rate_iou50'))} | "
                    f"{_fmt(lesion.get('hit_rate_iou30'))} | {_fmt(lesion.get('top1_hit_rate_iou50'))} | "
                    f"{_fmt(lesion.get('no_proposal_fraction'))} | "
                    f"{_fmt(lesion.get('false_proposals_per_lesion_image'))} | "
                    f"{_fmt(normal.get('false_proposals_per_normal_image'))} |")
    chosen = next(m for m in metrics["out_of_fold"]["by_min_score"] if m["min_score"] == threshold)
    per_class = " ".join(
        f"{c}: hit@0.5 {_fmt(chosen[c]['hit_rate_iou50'])} (n={chosen[c]['lesion_images']});"
        for c in ("benign", "malignant") if c in chosen)
    top1 = metrics["out_of_fold"]["top1_any_score"]["lesion"]
    s = metrics["settings"]
    ex = metrics["extraction"]
    excluded = metrics.get("excluded_films_without_centre") or []
    texts = {
        "busi": "BUSI (development 80 % split held here): benign, malignant and normal breast-ultrasound images with "
                "lesion masks; the union of an image's masks is the target, normal images are all-background.",
        "mias": "mini-MIAS films (development 80 % split held here): disk masks from the Info.txt centre and radius "
                "(origin bottom-left, row = 1024 - Y); normal films are all-background; films with an abnormality "
                f"but no centre left out ({', '.join(excluded) or 'none'}). The breast mask limits the input.",
        "bus-uclm": "BUS-UCLM (Spain, Siemens ACUSON S2000; licence CC BY-NC 4.0): benign, malignant and normal frames "
                    "with lesion masks, grouped by patient; frames whose mask does not fit the image left out.",
        "cbis-ddsm": "CBIS-DDSM masses (official training split; licence CC BY 3.0): digitised films with every "
                     "mass's box; the data has no outlines, so each mass's target is the ellipse inscribed in its "
                     "box; rows restored by the aspect ratio of the squashed copies (1.70); grouped by patient; no "
                     "normal films. The breast mask limits the input.",
    }
    data_text = " ".join(texts.get(k, f"{k}: lesion masks per image; normal images are all background.")
                         for k in kind.split("+"))
    text = f"""# {name} — lesion detector ({modality}), version {version}

**Research use only. Not a medical device.** Proposes lesion boxes on a whole {modality} image for the automatic
path of `branet analyze`; a segmenter and the malignancy classifier then work on each proposal.

## Model
Small U-Net ("TinyUNet": stride-2 stem, widths {list(s['channels'])}, BatchNorm, bilinear upsampling) predicting a
lesion-probability heatmap on the whole image letterboxed to {s['size']}x{s['size']} (2 channels: intensity stretched
to the 1st-99th percentile of valid pixels, and the valid mask). The shipped file holds the {cv['folds']} fold
models of the cross-validation; inference averages their heatmaps and the horizontally flipped input's.
Candidates: local maxima of the heatmap >= min_score; region = connected pixels >= {ex['region_level']} x peak;
box = region bounds grown by {ex['expand']} per side, mapped back to image pixels; NMS IoU {ex['nms_iou']}; top-k.
Score = peak probability. Recommended `min_score`: **{threshold}** (the manifest threshold; {reason}; the table
shows the trade-off).

## Data
{data_text}
Images: {metrics['images']} ({', '.join(f'{k} {v}' for k, v in metrics['categories'].items())}),
{metrics['lesion_boxes']} lesion boxes. Citation: {' '.join(citation_of(k) for k in kind.split('+'))}

## Training
BCE + batch soft-Dice loss; AdamW lr {s['lr']} (warm-up + cosine), weight decay {s['weight_decay']}, batch
{s['batch_size']}, {s['epochs']} epochs{f", random {s['crop']}x{s['crop']} crops (lesion-centred with p={s['lesion_crop_p']})" if s['crop'] else ''};
augmentation: horizontal flip, rotation +-10 deg, zoom 0.75-1.33, shift +-10 %, gamma, contrast, brightness, blur,
noise. Seed {s['seed']}. CPU training time (2 shared cores): {metrics['training_seconds'] / 60:.0f} min.

## Validation ({cv['folds']}-fold, {'grouped by patient, ' if cv['grouped_by_patient'] else 'grouped by identical image, ' if cv.get('grouped') else ''}stratified by category; last epoch, out-of-fold)
A hit = a proposal with box IoU >= 0.5 (or 0.3) with a ground-truth lesion box (mask bounding box). Top-3 proposals.

| min_score | hit@0.5 | hit@0.3 | top-1 hit@0.5 | no proposal | false/lesion img | false/normal img |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

At min_score {threshold}: {per_class}
Top-1 proposal at any score: hit@0.5 {_fmt(top1['top1_hit_rate_iou50'])}, mean IoU {_fmt(top1['mean_best_iou'])}.
Heatmap Dice (threshold 0.5, lesion images, model resolution): {_fmt(metrics['out_of_fold']['heatmap_dice_at_0.5']['mean'])}.
The extraction settings (region level, expansion) were chosen on these out-of-fold heatmaps (12 combinations), a
mild optimistic bias. Fold members in the ensemble are each validated here; the ensemble itself has no held-out
estimate from this data.

{_detector_sites_text(metrics, threshold)}
### Segmenting the proposal
{_segmentation_text(segmentation)}

## Intended use and limitations
Research only: a first stage that proposes where to look. It misses lesions (see the table) and proposes false
ones; every output needs a reader. Trained on one public dataset per modality: other scanners, presets, digital
mammography (vs digitised film) and populations will shift its scores. {'BUSI carries no patient ids, so images of one woman may fall in different folds (optimistic). Some BUSI and BUS-UCLM images show caliper marks that can act as shortcuts.' if 'busi' in kind else 'mini-MIAS is small (tens of lesions), digitised film at 200 um, with coarse circular annotations; architectural distortions and asymmetries are hard to box.'}
"""
    path.write_text(text)
    return path
