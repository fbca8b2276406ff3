"""Every bad input ends in exactly one row (README "Bad input", DESIGN §8), on the corpus of
`tests/data/make_bad_corpus.py`: unit tests on listing and reading, each error_type, the skipped
counts, malformed listings, and the whole corpus as one real Beam pipeline. Also the run
summary's lost-input check (tar samples, repeated listings) and report.html escaping."""
from __future__ import annotations

import collections
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from inputs.decode import decode_image
from inputs.elements import Failure, ImageElement, make_image_id
from inputs.layouts import InputUnit, list_inputs, scan_inputs
from inputs.reader import DecodeLimits, read_unit
from clipsam.metrics import SCORE_METRICS
from pipeline.report import write_report
from pipeline.summary import RunSummary
from tests.data.make_bad_corpus import MEMBER_LIMIT, PIXEL_LIMIT, make_bad_corpus
from tests.test_read import counter, local_url, run_read_pipeline
from transforms.read import ReadImages

LIMITS = DecodeLimits(pixel_limit=PIXEL_LIMIT)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("bad")
    return root, make_bad_corpus(root)


def list_corpus_input(root: Path, name: str, layout: str) -> list[InputUnit]:
    return list_inputs(str(root / name), layout=layout)


def outcome(out: ImageElement | Failure, base: str) -> tuple:
    source = out.source_uri[len(base):].lstrip("/")
    if isinstance(out, Failure):
        return source, ("failure", out.error_type)
    pixels = None if out.gt_mask is None else int(out.gt_mask.sum())
    return source, ("record", out.category, out.label, out.image.shape, pixels)


def expected_rows(corpus: dict, name: str | None = None) -> list[tuple]:
    rows = []
    for inp, source, result in corpus["expected"]:
        if name is None or inp == name:
            rows.append((source, result[:5]))
    return sorted(rows, key=repr)


# ----------------------------------------------------------------------------- per input
@pytest.mark.parametrize("name", ["files", "in[1]", "visa", "mvtec/widget"])
def test_every_listing_file_and_sample_gives_one_row(corpus, name: str):
    root, expected = corpus
    units = list_corpus_input(root, name, expected["inputs"][name])
    outputs = [out for unit in units for out in read_unit(unit, LIMITS)]
    base = local_url(root)
    assert sorted((outcome(o, base) for o in outputs), key=repr) == expected_rows(expected, name)
    # One image id never has two rows (a repeated listing has its own id).
    ids = collections.Counter(o.image_id for o in outputs)
    assert [i for i, n in ids.items() if n > 1] == []
    notes = {source: result[5] for inp, source, result in expected["expected"] if result[0] == "record"}
    for element in (o for o in outputs if isinstance(o, ImageElement)):
        note = notes[outcome(element, base)[0]]
        if note:
            assert any(note in n for n in element.notes), (element.source_uri, element.notes)


@pytest.mark.parametrize("name", ["files", "in[1]", "visa", "mvtec/widget"])
def test_skipped_files_are_counted_by_reason(corpus, name: str):
    root, expected = corpus
    listing = scan_inputs(str(root / name), layout=expected["inputs"][name])
    assert listing.skipped == expected["skipped"][name]
    assert listing.units == list_corpus_input(root, name, expected["inputs"][name])


def test_malformed_listings_raise_naming_the_csv_line(corpus):
    root, expected = corpus
    assert len(expected["malformed"]) >= 4
    for name, pattern in expected["malformed"].items():
        with pytest.raises(ValueError, match=pattern) as info:
            list_inputs(str(root / name))
        assert str(root / name) in str(info.value)


# ----------------------------------------------------------------------------- classes
def test_literal_names_win_over_glob_and_chain_syntax(corpus):
    root, _ = corpus
    [unit] = list_inputs(str(root / "files" / "a::b.png"))
    assert unit.uri == local_url(root / "files") + "/a::b.png"
    assert isinstance(next(read_unit(unit)), ImageElement)
    for spelling in (str(root / "in[1]"), "file://" + str(root / "in[1]"), str(root / "in[1]") + "/"):
        assert [u.uri.rsplit("/", 2)[-2:] for u in list_inputs(spelling)] == [["in[1]", "ok.png"]]
    globbed = list_inputs(str(root / "files" / "*.tif"))  # a name that matches nothing is still a glob
    assert [u.uri.rsplit("/", 1)[1] for u in globbed] == ["float01.tif", "float255.tif", "floatnan.tif"]


def test_non_utf8_file_name_is_a_failure_with_a_printable_uri(corpus):
    root, _ = corpus
    [unit] = [u for u in list_inputs(str(root / "files")) if u.problem]
    assert unit.uri.endswith("/bad\\xff.png") and unit.uri.encode("utf-8")
    [failure] = read_unit(unit)
    assert (failure.error_type, failure.image_id) == ("NonUtf8Name", make_image_id(unit.uri))
    assert "not valid UTF-8" in failure.message


def test_repeated_listing_is_one_failure_per_repeat_with_its_own_id(corpus):
    root, _ = corpus
    units = [u for u in list_inputs(str(root / "visa")) if u.uri.endswith("/img/000.png")]
    assert [(u.problem, u.repeat, u.label) for u in units] == [("", 0, 0), ("DuplicateInput", 1, 1),
                                                              ("DuplicateInput", 2, 0)]
    outputs = [next(read_unit(u)) for u in units]
    assert isinstance(outputs[0], ImageElement) and outputs[0].label == 0  # the first listing is read
    assert {o.source_uri for o in outputs} == {units[0].uri}
    assert len({o.image_id for o in outputs}) == 3
    assert outputs[1].image_id == make_image_id(units[0].uri, "repeat 1")
    assert "line 4" in outputs[1].message and "line 2" in outputs[1].message
    assert sorted(set(units)) == sorted(units)  # repeats stay distinct when merged as a set


def test_nul_byte_in_a_csv_path_is_a_failure(corpus):
    root, _ = corpus
    [unit] = [u for u in list_inputs(str(root / "visa")) if u.problem == "InvalidPath"]
    assert "\x00" not in unit.uri and unit.uri.endswith("img/0\\x0002.png")
    [failure] = read_unit(unit)
    assert failure.error_type == "InvalidPath" and "1cls.csv line 6" in failure.message


def test_float_tiff_is_scaled_from_its_unit_range(corpus):
    root, _ = corpus
    image, notes = decode_image((root / "files" / "float01.tif").read_bytes(), "float01.tif")
    expected = np.rint(np.linspace(0.0, 1.0, 40 * 48).reshape(40, 48).astype(np.float32) * 255.0)
    np.testing.assert_array_equal(image[:, :, 0], expected.astype(np.uint8))
    assert image.max() == 255 and any("[0, 1]" in n for n in notes)


def test_tar_member_classes(corpus):
    root, _ = corpus

    def rows(name: str) -> list[tuple]:
        [unit] = list_inputs(str(root / "files" / name))
        return [(o.source_uri[len(unit.uri):], o.error_type if isinstance(o, Failure) else "record")
                for o in read_unit(unit, LIMITS)]

    assert rows("links.tar") == [("#s0", "record")] + [(f"#s{i}", "UnsupportedMember") for i in range(1, 7)]
    assert rows("dup-member.tar") == [("#k0", "DuplicateMember"), ("#k1", "record")]
    assert rows("split-key.tar") == [("#a", "DuplicateKey"), ("#b", "record")]
    assert rows("cut-header.tar") == [("#s0", "record"), ("", "UnreadableShard")]
    assert rows("bomb.tar") == [("#bomb", "ImageTooLarge"), ("#ok", "record")]
    assert rows("badname.tar") == [("#\\xff", "NonUtf8Name"), ("#ok", "record")]
    assert rows("empty.tar") == [("", "EmptyShard")]
    assert rows("dirs-only.tar") == [("", "EmptyShard")]


def test_oversize_member_is_never_read_into_memory(corpus):
    root, _ = corpus
    [unit] = list_inputs(str(root / "files" / "oversize.tar.gz"))
    tracemalloc.start()
    try:
        outputs = list(read_unit(unit, LIMITS))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [o.error_type for o in outputs if isinstance(o, Failure)] == ["MemberTooLarge"]
    assert str(MEMBER_LIMIT) in outputs[1].message
    assert peak < MEMBER_LIMIT // 4


# ----------------------------------------------------------------------------- one pipeline
@pytest.mark.timeout(300)
def test_whole_corpus_in_one_beam_pipeline(corpus):
    root, expected = corpus
    units = [u for name, layout in expected["inputs"].items() for u in list_corpus_input(root, name, layout)]
    rows = []
    for _, source, result in expected["expected"]:
        name = source.split("#")[0]
        rows.append(("failure", name, result[1]) if result[0] == "failure" else ("image", name, *result[1:5]))
    # Inputs are listings, files and tar samples: every one of them is one row.
    image_listings = sum(1 for u in units if u.kind == "image")
    tar_rows = sum(1 for _, source, _ in expected["expected"] if ".tar" in source)
    assert len(rows) == image_listings + tar_rows
    result = run_read_pipeline(ReadImages(units, pixel_limit=PIXEL_LIMIT), [local_url(root)], rows,
                               PipelineOptions())
    failures = sum(1 for row in rows if row[0] == "failure")
    assert counter(result, "read_failed") == failures
    assert counter(result, "read_ok") == len(rows) - failures


def test_whole_corpus_through_the_whole_job(corpus, untrained_store, tmp_path):
    """The same corpus through `pipeline.run` (both model stages, writers, accounting): every
    listing, file and tar sample is exactly one record or failure row, and none is lost."""
    from pipeline.run import run

    root, expected = corpus
    inputs = ",".join(str(root / name) for name in expected["inputs"])
    summary = run([f"--input={inputs}", f"--output={tmp_path}", f"--model_store={untrained_store}",
                   f"--pixel_limit={PIXEL_LIMIT}", "--run_id=bad", "--runner=FnApiRunner", "--batch_size=4",
                   "--eval=off", "--report=off"])
    rows = len(expected["expected"])
    assert summary.num_records + summary.num_failures == rows
    assert summary.lost == 0
    want = collections.Counter(result[1] for _, _, result in expected["expected"] if result[0] == "failure")
    assert summary.failures_by_type == dict(want)


# ----------------------------------------------------------------------------- run summary
def test_report_escapes_every_data_value(tmp_path: Path):
    hostile = "<img src=x onerror=alert(1)>"
    counts = {"images": 1, "ok": 0, "ng": 1, "sam_used": 0, "normal": 0, "anomalous": 1, "unlabelled": 0,
              "false_alarms": 0, "misses": 0}
    item = {"category": hostile, "image_id": hostile, "source_uri": f"file:///{hostile}.tar#{hostile}",
            "image_score": 0.9, "image_threshold": 0.5, "pred_label": hostile, "gt_label": 1, "sam_used": False,
            "defects": 1, "overlay": hostile}
    curve = {"x": [0.0, 1.0], "y": [0.0, 1.0], "x_label": hostile, "y_label": hostile, "area": 0.5}
    summary = RunSummary(
        run_dir=str(tmp_path), categories={hostile: counts}, failures_by_type={hostile: 1, "Lost": 1},
        metrics={"categories": {hostile: {name: 0.5 for name in SCORE_METRICS}}, "dataset": {"mean": {"image_auroc": 0.5}}},
        elapsed_s=1.0, skipped={hostile: 2}, galleries={hostile: {"most_anomalous": [item]}},
        failure_samples=[{"stage": hostile, "error_type": "Lost", "source_uri": hostile, "image_id": hostile,
                          "message": hostile, "run_id": "r"}],
        curves={hostile: {"pixel_roc": curve}}, settings={hostile: hostile}, thresholds=hostile,
        default_threshold_categories=[hostile],
    )
    write_report(summary)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<img src=x" not in page and "onerror=alert(1)>" not in page
    assert page.count("&lt;img src=x onerror=alert(1)&gt;") >= 12
    assert "<b>mean</b>" in page and "<svg" in page  # the template's own markup stays markup


def test_summary_text_prints_skipped_by_reason():
    summary = RunSummary(run_dir="r", failures_by_type={}, categories={}, metrics=None, elapsed_s=0.0,
                         files={"records": "r/records-*.parquet", "failures": "r/failures-*.parquet"},
                         skipped={"unsupported extension": 3, "image (layout 'tar')": 1})
    assert "skipped on purpose at listing: image (layout 'tar'): 1, unsupported extension: 3" in summary.text()
