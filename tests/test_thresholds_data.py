"""The thresholds file: schema, validation, digest; and `run --thresholds / --calibrate_on`."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipsam.thresholds import (POLICY_NORMAL_QUANTILE, POLICY_PROFILE_DEFAULT, CategoryThresholds, Thresholds,
                                ThresholdsError, decide, image_quantile_threshold)
from pipeline.run import main as run_main
from pipeline.stored_records import read_rows


def _file(digests=None) -> Thresholds:
    return Thresholds(
        profile="tiny", model_digests=digests or {"clip": "a" * 64, "sam": "b" * 64}, created_at="2026-01-01T00:00:00+00:00",
        source="file:///calib/run",
        categories={
            "washer": CategoryThresholds(0.42, 0.61, POLICY_NORMAL_QUANTILE, 0.999, 57, 1000),
            "bolt": CategoryThresholds(None, None, POLICY_PROFILE_DEFAULT, None, 3, 30, "3 normal images"),
        },
    )


def test_round_trip_and_digest_of_canonical_json():
    thresholds = _file()
    again = Thresholds.loads(thresholds.dumps())
    assert again == thresholds and again.digest() == thresholds.digest()
    compact = json.dumps(json.loads(thresholds.dumps()))  # other formatting, same data: same digest
    assert Thresholds.loads(compact).digest() == thresholds.digest()
    data = thresholds.to_dict()
    data["categories"]["washer"]["image_threshold"] = 0.62
    assert Thresholds.from_dict(data).digest() != thresholds.digest()
    assert thresholds.calibrated("washer").pixel_threshold == 0.42
    assert thresholds.calibrated("bolt") is None and thresholds.calibrated("nut") is None


@pytest.mark.parametrize("change,message", [
    (lambda d: d.update(version=2), "version"),
    (lambda d: d.pop("model_digests"), "missing ['model_digests']"),
    (lambda d: d.update(extra=1), "unknown ['extra']"),
    (lambda d: d["categories"]["washer"].update(pixel_threshold=1.5), "categories.washer.pixel_threshold"),
    (lambda d: d["categories"]["washer"].update(policy="magic"), "categories.washer.policy"),
    (lambda d: d["categories"]["washer"].update(quantile=None), "categories.washer.quantile"),
    (lambda d: d["categories"]["bolt"].update(image_threshold=0.3), "categories.bolt.image_threshold"),
    (lambda d: d["categories"]["bolt"].update(reason=None), "categories.bolt.reason"),
])
def test_invalid_files_name_the_key(change, message):
    data = _file().to_dict()
    change(data)
    with pytest.raises(ThresholdsError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Thresholds.from_dict(data)
    with pytest.raises(ThresholdsError, match="not valid JSON"):
        Thresholds.loads("{nope")


def test_decide_and_image_quantile():
    assert decide(0.5, 0.5) == "NG" and decide(0.49, 0.5) == "OK"
    assert image_quantile_threshold([0.2, 0.3, 0.4], 0.999) > 0.4
    assert image_quantile_threshold([1.0, 1.0], 0.5) == 1.0


# --- the launcher, on the untrained tiny store ------------------------------------------------

@pytest.fixture()
def good_parts(tmp_path) -> Path:
    folder = tmp_path / "good"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for i, (h, w) in enumerate([(37 + 10, 53), (101, 64), (64, 48)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"part{i}.png")
    return folder


def _store_digests(store: str) -> dict[str, str]:
    from model_store.preflight import check_profile
    return check_profile(store, "tiny").digests()


def _launch(store, inputs, out, *extra) -> int:
    return run_main([f"--input={inputs}", f"--output={out}", f"--model_store={store}", "--run_id=r",
                     "--category=washer", "--report=off", "--batch_size=4", *extra])


def test_run_applies_a_thresholds_file(untrained_store, good_parts, tmp_path, capsys):
    digests = _store_digests(untrained_store)
    thresholds = Thresholds("tiny", digests, "2026-01-01T00:00:00+00:00", "x", {
        "washer": CategoryThresholds(0.0, 1.0, POLICY_NORMAL_QUANTILE, 0.999, 20, 100)})
    path = tmp_path / "thresholds.json"
    path.write_text(thresholds.dumps())
    assert _launch(untrained_store, good_parts, tmp_path / "out", f"--thresholds={path}") == 0
    rows = read_rows(str(tmp_path / "out" / "r"), "records")
    assert len(rows) == 3
    for row in rows:
        assert row["thresholds_digest"] == thresholds.digest()
        assert row["mask_threshold"] == 0.0 and row["image_threshold"] == 1.0
        assert row["pred_label"] == ("NG" if row["image_score"] >= 1.0 else "OK")
        assert row["anomaly_area_fraction"] == 1.0  # every pixel ≥ 0
        assert len(row["defects"]) == 1 and row["defects"][0]["area"] == row["width"] * row["height"]
    assert f"(sha256 {thresholds.digest()})" in capsys.readouterr().out


def test_thresholds_for_other_digests_exit_2_unless_allowed(untrained_store, good_parts, tmp_path, capsys):
    other = {role: "0" * 64 for role in _store_digests(untrained_store)}
    path = tmp_path / "thresholds.json"
    path.write_text(_file(other).dumps())
    assert _launch(untrained_store, good_parts, tmp_path / "out", f"--thresholds={path}") == 2
    err = capsys.readouterr().err
    assert "--thresholds" in err and "0" * 64 in err and next(iter(_store_digests(untrained_store).values())) in err
    assert not (tmp_path / "out").exists()  # refused before any work
    path.write_text("{}")
    assert _launch(untrained_store, good_parts, tmp_path / "out", f"--thresholds={path}") == 2
    assert "--thresholds" in capsys.readouterr().err
    path.write_text(_file(other).dumps())
    assert _launch(untrained_store, good_parts, tmp_path / "out", f"--thresholds={path}", "--allow_threshold_mismatch") == 0
    assert "profile default thresholds" not in capsys.readouterr().out  # washer is in the file
    rows = read_rows(str(tmp_path / "out" / "r"), "records")
    assert {r["thresholds_digest"] for r in rows} == {_file(other).digest()}
    assert {(r["mask_threshold"], r["image_threshold"]) for r in rows} == {(0.42, 0.61)}


def test_calibrate_on_then_score(untrained_store, good_parts, tmp_path, capsys):
    assert _launch(untrained_store, good_parts, tmp_path / "out", f"--calibrate_on={good_parts}") == 0
    run_dir = tmp_path / "out" / "r"
    thresholds = Thresholds.loads((run_dir / "thresholds.json").read_text())
    assert thresholds.model_digests == _store_digests(untrained_store)
    # 3 good parts < the default --min_normal of 10: the profile default, with the reason.
    assert thresholds.categories["washer"].policy == POLICY_PROFILE_DEFAULT
    assert (run_dir / "calibration" / "_SUCCESS.json").exists()
    assert len(read_rows(str(run_dir / "calibration"), "records")) == 3
    rows = read_rows(str(run_dir), "records")
    assert len(rows) == 3 and {r["thresholds_digest"] for r in rows} == {thresholds.digest()}
    assert "thresholds.json" in (run_dir / "_SUCCESS.json").read_text()
    assert "profile default thresholds (not calibrated in the file) for: washer" in capsys.readouterr().out
