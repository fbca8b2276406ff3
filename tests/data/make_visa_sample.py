"""Regenerate `tests/data/visa_sample/`: a tiny synthetic dataset in the VisA layout.

Why synthetic: VisA's own images are large and licence-bound; the reader only needs the layout
(`split_csv/1cls.csv`, `Data/Images/{Normal,Anomaly}/*.JPG`, `Data/Masks/Anomaly/*.png`) and
VisA's mask convention (defect pixels hold a class id > 0, not 255). One category,
`candle_synth`: 3 normal images (2 test, 1 train) and 2 anomalous test images with masks,
128×128, seeded, so reruns give the same pixels (up to the JPEG encoder's version).

Run: python tests/data/make_visa_sample.py [OUT_DIR]
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
from PIL import Image

CATEGORY = "candle_synth"
SIZE = 128
SEED = 20261121
# (file stem, split, label, mask class id or 0)
SAMPLES = [
    ("000", "test", "normal", 0),
    ("001", "test", "normal", 0),
    ("002", "train", "normal", 0),
    ("000", "test", "anomaly", 1),
    ("001", "test", "anomaly", 2),
]


def _candle(rng: np.random.Generator) -> np.ndarray:
    """A warm disc on a dark gradient with sensor noise, RGB uint8 (SIZE, SIZE, 3)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    background = 30 + 40 * yy / SIZE
    disc = ((yy - 64) ** 2 + (xx - 64) ** 2) < 40**2
    image = np.stack([background, background * 0.9, background * 0.8], axis=2)
    image[disc] = (225, 205, 170)
    image += rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _defect(rng: np.random.Generator, class_id: int) -> np.ndarray:
    """A random ellipse inside the disc, uint8 (SIZE, SIZE) holding `class_id` on the defect."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    cy, cx = rng.uniform(45, 83, size=2)
    ry, rx = rng.uniform(5, 12, size=2)
    inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    return (inside * class_id).astype(np.uint8)


def make_visa_sample(out: Path) -> None:
    rng = np.random.default_rng(SEED)
    rows = []
    for stem, split, label, class_id in SAMPLES:
        image = _candle(rng)
        kind = "Normal" if label == "normal" else "Anomaly"
        image_rel = f"{CATEGORY}/Data/Images/{kind}/{stem}.JPG"
        mask_rel = ""
        if class_id:
            mask = _defect(rng, class_id)
            image[mask > 0] = (90, 60, 40)
            mask_rel = f"{CATEGORY}/Data/Masks/Anomaly/{stem}.png"
            (out / mask_rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(out / mask_rel)
        (out / image_rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(out / image_rel, quality=90)
        rows.append({"object": CATEGORY, "split": split, "label": label,
                     "image": image_rel, "mask": mask_rel})
    (out / "split_csv").mkdir(parents=True, exist_ok=True)
    with open(out / "split_csv" / "1cls.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["object", "split", "label", "image", "mask"])
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    default = Path(__file__).parent / "visa_sample"
    make_visa_sample(Path(sys.argv[1]) if len(sys.argv) > 1 else default)
