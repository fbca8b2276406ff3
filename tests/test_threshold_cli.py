"""pipeline.threshold: a mask threshold from the stored maps of normal images."""
import json

import numpy as np
import pytest

from clipsam.stage2 import Prediction
from clipsam.metrics import DEFAULT_BINS, bin_lower_edge, score_bins
from pipeline.threshold import main, normal_thresholds
from inputs.elements import ImageElement, make_image_id
from transforms.records import RECORD_SCHEMA, read_map_png, to_record
from transforms.write import write_parquet


def _record(category: str, final_map: np.ndarray, index: int) -> dict:
    h, w = final_map.shape
    uri = f"file:///line/{category}/{index:03d}.png"
    element = ImageElement(make_image_id(uri), uri, category, np.zeros((h, w, 3), np.uint8))
    prediction = Prediction(
        rough_map=final_map, final_map=final_map, mask=final_map >= 0.5, prompts=[], sam_scores=np.zeros((0, 3)),
        image_score=float(final_map.max()), clip_image_score=0.1, max_pixel_score=float(final_map.max()),
        mask_threshold=0.5, sam_used=False,
    )
    return to_record(element, prediction, run_id="r", profile="tiny", digests={}, store_maps=True)


def test_thresholds_are_quantiles_of_stored_maps(tmp_path):
    rng = np.random.default_rng(0)
    maps = {"washer": [rng.beta(2, 8, (120, 90)).astype(np.float32) for _ in range(3)],
            "bolt": [rng.beta(5, 5, (64, 64)).astype(np.float32) for _ in range(2)]}
    rows = [_record(cat, m, i) for cat, ms in maps.items() for i, m in enumerate(ms)]
    write_parquet(str(tmp_path / "records-00000-of-00001.parquet"), rows, RECORD_SCHEMA)
    found = normal_thresholds(str(tmp_path), 0.99)
    assert found.keys() == {"washer", "bolt"}
    for category, ms in maps.items():
        stored = np.concatenate([read_map_png(r["anomaly_map_png"]).ravel()
                                 for r in rows if r["category"] == category])
        assert found[category]["pixels"] == stored.size
        # The histogram answers with a score of the data; np.quantile interpolates between two.
        lower, upper = np.quantile(stored, 0.99, method="lower"), np.quantile(stored, 0.99, method="higher")
        assert lower - 1e-4 <= found[category]["mask_threshold"] <= upper + 1e-4
        assert (stored >= found[category]["mask_threshold"]).mean() <= 0.01


def test_cli_prints_json_and_rejects_missing_maps(tmp_path, capsys):
    row = _record("washer", np.full((40, 40), 0.25, np.float32), 0)
    write_parquet(str(tmp_path / "records-00000-of-00001.parquet"), [row], RECORD_SCHEMA)
    assert main([f"--records={tmp_path}", "--quantile=0.5"]) == 0
    stored = float(read_map_png(row["anomaly_map_png"])[0, 0])
    assert stored == pytest.approx(0.25, abs=2e-4)  # one 16-bit level on the log-odds scale
    # Every normal pixel has that score: the threshold is the lower edge of the next bin.
    expected = bin_lower_edge(int(score_bins(stored, DEFAULT_BINS)) + 1, DEFAULT_BINS)
    assert json.loads(capsys.readouterr().out)["washer"]["mask_threshold"] == expected
    row["anomaly_map_png"] = None
    write_parquet(str(tmp_path / "records-00000-of-00001.parquet"), [row], RECORD_SCHEMA)
    assert main([f"--records={tmp_path}"]) == 2
    assert "run the pipeline with --store_maps" in capsys.readouterr().err
    assert main([f"--records={tmp_path}", "--quantile=1.5"]) == 2
