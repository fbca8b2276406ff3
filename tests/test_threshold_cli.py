"""pipeline.threshold: a thresholds file from the normal images of a calibration run."""
import json

import numpy as np
import pytest

from clipsam.stage2 import Prediction
from clipsam.metrics import DEFAULT_BINS, bin_lower_edge, score_bins
from clipsam.thresholds import POLICY_NORMAL_QUANTILE, POLICY_PROFILE_DEFAULT, Thresholds
from pipeline.threshold import calibrate, main
from inputs.elements import ImageElement, make_image_id
from transforms.records import RECORD_SCHEMA, read_map_png, to_record
from transforms.write import write_parquet

DIGESTS = {"clip": "c" * 64, "sam": "s" * 64, "umci": "u" * 64}


def _record(category: str, final_map: np.ndarray, index: int, label: int | None = 0,
            image_score: float | None = None) -> dict:
    h, w = final_map.shape
    uri = f"file:///line/{category}/{index:03d}.png"
    element = ImageElement(make_image_id(uri), uri, category, np.zeros((h, w, 3), np.uint8), label=label)
    prediction = Prediction(
        rough_map=final_map, final_map=final_map, mask=final_map >= 0.5, prompts=[], sam_scores=np.zeros((0, 3)),
        image_score=float(final_map.max()) if image_score is None else image_score, clip_image_score=0.1,
        max_pixel_score=float(final_map.max()), mask_threshold=0.5, sam_used=False,
    )
    return to_record(element, prediction, run_id="r", profile="tiny", digests=DIGESTS, store_maps=True)


def _write(tmp_path, rows) -> str:
    write_parquet(str(tmp_path / "records-00000-of-00001.parquet"), rows, RECORD_SCHEMA)
    return str(tmp_path)


def test_thresholds_are_quantiles_of_normal_images_only(tmp_path):
    rng = np.random.default_rng(0)
    maps = {"washer": [rng.beta(2, 8, (120, 90)).astype(np.float32) for _ in range(3)],
            "bolt": [rng.beta(5, 5, (64, 64)).astype(np.float32) for _ in range(2)]}
    rows = [_record(cat, m, i) for cat, ms in maps.items() for i, m in enumerate(ms)]
    # Anomalous and unlabelled images must not move the thresholds.
    rows += [_record("washer", np.ones((30, 30), np.float32), 10, label=1),
             _record("washer", np.ones((30, 30), np.float32), 11, label=None)]
    found = calibrate(_write(tmp_path, rows), 0.99, min_normal=1)
    assert found.categories.keys() == {"washer", "bolt"}
    assert found.model_digests == DIGESTS and found.profile == "tiny"
    for category, ms in maps.items():
        entry = found.categories[category]
        assert entry.policy == POLICY_NORMAL_QUANTILE and entry.quantile == 0.99 and entry.normal_images == len(ms)
        stored = np.concatenate([read_map_png(r["anomaly_map_png"]).ravel()
                                 for r in rows if r["category"] == category and r["gt_label"] == 0])
        assert entry.normal_pixels == stored.size
        # The histogram answers with a score of the data; np.quantile interpolates between two.
        lower, upper = np.quantile(stored, 0.99, method="lower"), np.quantile(stored, 0.99, method="higher")
        assert lower - 1e-4 <= entry.pixel_threshold <= upper + 1e-4
        assert (stored >= entry.pixel_threshold).mean() <= 0.01
        scores = [r["image_score"] for r in rows if r["category"] == category and r["gt_label"] == 0]
        assert max(scores) < entry.image_threshold <= 1.0  # q * n rounds up to n: every normal image is OK


def test_image_threshold_bounds_the_normal_ng_rate(tmp_path):
    scores = np.linspace(0.1, 0.6, 40)
    rows = [_record("nut", np.full((20, 20), 0.2, np.float32), i, image_score=float(s)) for i, s in enumerate(scores)]
    entry = calibrate(_write(tmp_path, rows), 0.9, min_normal=10).categories["nut"]
    assert (scores >= entry.image_threshold).mean() <= 0.1
    assert entry.image_threshold == pytest.approx(scores[35], abs=1e-12)  # just above the 36th smallest


def test_cli_writes_a_valid_file_and_rejects_missing_maps(tmp_path, capsys):
    rows = [_record("washer", np.full((40, 40), 0.25, np.float32), i) for i in range(3)]
    records = _write(tmp_path, rows)
    out = tmp_path / "thresholds.json"
    assert main([f"--records={records}", f"--out={out}", "--quantile=0.5", "--min_normal=2"]) == 0
    loaded = Thresholds.loads(out.read_text())
    assert loaded.digest() in capsys.readouterr().out
    stored = float(read_map_png(rows[0]["anomaly_map_png"])[0, 0])
    assert stored == pytest.approx(0.25, abs=2e-4)  # one 16-bit level on the log-odds scale
    # Every normal pixel has that score: the threshold is the lower edge of the next bin.
    expected = bin_lower_edge(int(score_bins(stored, DEFAULT_BINS)) + 1, DEFAULT_BINS)
    assert loaded.categories["washer"].pixel_threshold == expected
    assert json.loads(out.read_text())["version"] == 1
    # Without --out the file's JSON goes to stdout.
    assert main([f"--records={records}", "--min_normal=1"]) == 0
    assert Thresholds.loads(capsys.readouterr().out).categories["washer"].normal_images == 3
    rows[1]["anomaly_map_png"] = None
    _write(tmp_path, rows)
    assert main([f"--records={records}"]) == 2
    assert "run the pipeline with --store_maps" in capsys.readouterr().err
    assert main([f"--records={records}", "--quantile=1.5"]) == 2


def test_too_few_normal_images_fall_back_with_a_warning(tmp_path, capsys):
    rows = [_record("washer", np.full((16, 16), 0.3, np.float32), i) for i in range(12)]
    rows += [_record("bolt", np.full((16, 16), 0.3, np.float32), i) for i in range(3)]
    out = tmp_path / "t.json"
    assert main([f"--records={_write(tmp_path, rows)}", f"--out={out}"]) == 0
    err = capsys.readouterr().err
    assert "warning: category 'bolt': 3 normal images, fewer than --min_normal=10" in err and "washer" not in err
    loaded = Thresholds.loads(out.read_text())
    bolt = loaded.categories["bolt"]
    assert bolt.policy == POLICY_PROFILE_DEFAULT and bolt.pixel_threshold is None and "min_normal" in bolt.reason
    assert loaded.calibrated("bolt") is None and loaded.calibrated("washer") is not None


def test_unlabelled_images_need_all_normal(tmp_path, capsys):
    rows = [_record("object", np.full((16, 16), 0.3, np.float32), i, label=None) for i in range(2)]
    records = _write(tmp_path, rows)
    assert main([f"--records={records}"]) == 2
    assert "pass --all_normal" in capsys.readouterr().err
    assert main([f"--records={records}", "--all_normal", "--min_normal=2"]) == 0
    assert Thresholds.loads(capsys.readouterr().out).categories["object"].normal_images == 2
