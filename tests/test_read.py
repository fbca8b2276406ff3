"""Listing (inputs.layouts) and reading (transforms.read): every layout, local / memory:// /
gs:// (fake-gcs-server), tar shards, bad inputs, and real Beam pipelines on FnApiRunner in one
process and with worker subprocesses. Invariant checked throughout: every input image becomes
exactly one ImageElement or one Failure."""
from __future__ import annotations

import csv
import gzip
import io
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterable, Optional

import apache_beam as beam
import fsspec
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from tests.conftest import REPO, BrokenInputs, GcsEmulator, tar_bytes
from inputs.elements import STAGE_DECODE, STAGE_READ, Failure, ImageElement, make_image_id
from inputs.layouts import InputSpec, InputUnit, list_inputs
from transforms.progress import NAMESPACE as METRICS_NAMESPACE
from inputs.reader import read_unit
from transforms.read import FAILURES, IMAGES, ReadImages


# ----------------------------------------------------------------------------- helpers
def png(height: int, width: int, seed: int = 0, mode: str = "RGB") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buf, "PNG")
    return buf.getvalue()


def jpeg(height: int, width: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 100, 50)).save(buf, "JPEG")
    return buf.getvalue()


def mask_png(height: int, width: int, on: slice = slice(0, 0)) -> bytes:
    pixels = np.zeros((height, width), np.uint8)
    pixels[on, on] = 255
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def nonzero(path: Path) -> int:
    return int(np.count_nonzero(np.asarray(Image.open(path))))


def read_all(units: Iterable[InputUnit]) -> list[ImageElement | Failure]:
    return [out for unit in units for out in read_unit(unit)]


def summary(out: ImageElement | Failure, base: str) -> tuple:
    """Comparable summary: the name relative to `base` (tar fragment dropped) and the outcome."""
    name = out.source_uri[len(base):].lstrip("/").split("#")[0]
    if isinstance(out, Failure):
        return ("failure", name, out.error_type)
    pixels = None if out.gt_mask is None else int(out.gt_mask.sum())
    return ("image", name, out.category, out.label, out.image.shape, pixels)


def summarise_against(bases: list[str]):
    """A picklable function summarising an output against whichever base prefixes its URI."""

    def run(out: ImageElement | Failure) -> tuple:
        return summary(out, next(b for b in bases if out.source_uri.startswith(b)))

    return run


def expected_broken(broken: BrokenInputs) -> list[tuple]:
    rows: list[tuple] = []
    for case in broken.cases:
        rows += [("failure", case.name, t) for t in case.failures]
        rows += [("image", case.name, "object", None, case.shape, None)] * case.images
    return rows


def expected_mvtec(category_root: Path) -> list[tuple]:
    """Independent expectation from the files: label from the folder, mask pixels from PIL."""
    rows = []
    for image in sorted(category_root.glob("test/*/*.png")):
        defect = image.parent.name
        mask = category_root / "ground_truth" / defect / f"{image.stem}_mask.png"
        pixels = 0 if defect == "good" else nonzero(mask)
        shape = np.asarray(Image.open(image)).shape[:2] + (3,)
        rel = image.relative_to(category_root.parent).as_posix()
        rows.append(("image", rel, category_root.name, int(defect != "good"), shape, pixels))
    return rows


def expected_visa(root: Path, split: str = "test") -> list[tuple]:
    rows = []
    with open(root / "split_csv" / "1cls.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["split"] == split:
                anomalous = row["label"] == "anomaly"
                pixels = nonzero(root / row["mask"]) if anomalous else 0
                label, shape = int(anomalous), (128, 128, 3)
                rows.append(("image", row["image"], row["object"], label, shape, pixels))
    return sorted(rows)


def structure(units: list[InputUnit], base: str) -> list[tuple]:
    """Units with URIs made relative to `base`, to compare listings of the same tree."""

    def rel(uri: Optional[str]) -> Optional[str]:
        return None if uri is None else uri[len(base):].lstrip("/")

    return [(u.kind, rel(u.uri), u.category, u.label, rel(u.mask_uri)) for u in units]


def local_url(path: Path) -> str:
    return fsspec.core.url_to_fs(str(path))[0].unstrip_protocol(str(path))


@pytest.fixture
def memfs():
    """A unique folder on fsspec's in-process memory filesystem, removed afterwards."""
    fs = fsspec.filesystem("memory")
    root = f"/test-{uuid.uuid4().hex}"
    yield fs, root
    fs.rm(root, recursive=True)


# ----------------------------------------------------------------------------- listing
class TestListInputs:
    def test_mvtec_multi_category_root(self, real_data_dir: Path):
        root = real_data_dir / "mvtec_ad_256"
        units = list_inputs(str(root))
        assert len(units) == 20 and units == sorted(units, key=lambda u: u.uri)
        assert {u.category for u in units} == {"hazelnut", "transistor"}
        for unit in units:
            assert unit.kind == "image" and unit.uri.startswith("file:///")
            good = "/test/good/" in unit.uri
            assert unit.label == (0 if good else 1)
            if good:
                assert unit.mask_uri is None
            else:
                assert Path(unit.mask_uri[len("file://"):]).is_file()
                assert unit.mask_uri.endswith(Path(unit.uri).stem + "_mask.png")

    def test_mvtec_single_category_root_uses_its_name(self, real_data_dir: Path):
        units = list_inputs(str(real_data_dir / "mvtec_ad" / "bottle"))
        assert len(units) == 8 and {u.category for u in units} == {"bottle"}
        assert sorted(u.label for u in units) == [0] * 4 + [1] * 4

    def test_category_selects_within_a_dataset(self, real_data_dir: Path):
        root = str(real_data_dir / "mvtec_ad_256")
        units = list_inputs(root, category="transistor")
        assert len(units) == 10 and {u.category for u in units} == {"transistor"}
        with pytest.raises(ValueError, match="no category 'bottle'.*hazelnut"):
            list_inputs(root, category="bottle")

    def test_equivalent_spellings_give_the_same_units(self, real_data_dir, monkeypatch):
        monkeypatch.chdir(real_data_dir)
        relative = list_inputs("mvtec_ad/bottle")
        absolute = list_inputs(str(real_data_dir / "mvtec_ad" / "bottle") + "/")
        file_url = list_inputs("file://" + str(real_data_dir / "mvtec_ad" / "bottle"))
        assert relative == absolute == file_url

    def test_visa_root(self, visa_sample_dir: Path):
        units = list_inputs(str(visa_sample_dir))
        base = local_url(visa_sample_dir)
        assert structure(units, base) == [
            ("image", "candle_synth/Data/Images/Anomaly/000.JPG", "candle_synth", 1,
             "candle_synth/Data/Masks/Anomaly/000.png"),
            ("image", "candle_synth/Data/Images/Anomaly/001.JPG", "candle_synth", 1,
             "candle_synth/Data/Masks/Anomaly/001.png"),
            ("image", "candle_synth/Data/Images/Normal/000.JPG", "candle_synth", 0, None),
            ("image", "candle_synth/Data/Images/Normal/001.JPG", "candle_synth", 0, None),
        ]
        assert len(list_inputs(str(visa_sample_dir), split=None)) == 5
        train = list_inputs(str(visa_sample_dir), split="train", layout="visa")
        assert [u.uri.rsplit("/", 1)[1] for u in train] == ["002.JPG"]

    def test_visa_csv_problems_fail_at_listing(self, tmp_path: Path):
        (tmp_path / "split_csv").mkdir()
        csv_path = tmp_path / "split_csv" / "1cls.csv"
        csv_path.write_text("object,split,image\nx,test,a.JPG\n")
        with pytest.raises(ValueError, match=r"missing columns \['label', 'mask'\]"):
            list_inputs(str(tmp_path))
        csv_path.write_text("object,split,label,image,mask\nx,test,broken,a.JPG,\n")
        with pytest.raises(ValueError, match="line 2: label 'broken'"):
            list_inputs(str(tmp_path))

    def test_folder_glob_and_tar_layouts(self, tmp_path: Path):
        for name in ["a/1.png", "a/b/2.JPG", "3.jpeg", "4.BMP", "5.tif", "6.TIFF"]:
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_bytes(png(32, 32))
        for name in ["s-0.tar", "s-1.tar.gz", "s-2.TGZ", "notes.txt", "labels.csv"]:
            (tmp_path / name).write_bytes(b"x")
        base = local_url(tmp_path)

        def rels(units):
            return [(u.kind, u.uri[len(base) + 1:], u.category, u.label) for u in units]

        images = ["3.jpeg", "4.BMP", "5.tif", "6.TIFF", "a/1.png", "a/b/2.JPG"]
        tars = ["s-0.tar", "s-1.tar.gz", "s-2.TGZ"]
        everything = sorted(
            [("image", n, "object", None) for n in images]
            + [("tar", n, "object", None) for n in tars],
            key=lambda row: row[1],
        )
        assert rels(list_inputs(str(tmp_path))) == everything
        assert rels(list_inputs(str(tmp_path), layout="folder", category="widget")) == [
            ("image", n, "widget", None) for n in images
        ]
        assert rels(list_inputs(str(tmp_path), layout="tar")) == [
            ("tar", n, "object", None) for n in tars
        ]
        assert rels(list_inputs(str(tmp_path / "a" / "*.png"))) == [
            ("image", "a/1.png", "object", None)
        ]
        assert rels(list_inputs(str(tmp_path / "*"))) == everything  # a matched folder is expanded
        assert rels(list_inputs(str(tmp_path / "a" / "b" / "2.JPG"))) == [
            ("image", "a/b/2.JPG", "object", None)
        ]

    def test_unusable_inputs_fail_before_any_work(self, tmp_path: Path, visa_sample_dir: Path):
        missing = str(tmp_path / "nope")
        with pytest.raises(ValueError, match=f"input '{missing}' matches no files"):
            list_inputs(missing)
        with pytest.raises(ValueError, match="matches no files"):
            list_inputs(str(tmp_path / "*.png"))
        (tmp_path / "empty").mkdir()
        with pytest.raises(ValueError, match="matches no files"):
            list_inputs(str(tmp_path / "empty"))
        (tmp_path / "readme.txt").write_text("hi")
        with pytest.raises(ValueError, match="holds no images or tar shards"):
            list_inputs(str(tmp_path))
        with pytest.raises(ValueError, match="holds no tar shards"):
            list_inputs(str(visa_sample_dir), layout="tar")
        with pytest.raises(ValueError, match="layout must be one of"):
            list_inputs(str(tmp_path), layout="coco")
        with pytest.raises(ValueError, match="needs a root folder"):
            list_inputs(str(tmp_path / "*"), layout="mvtec")
        with pytest.raises(ValueError, match="not a VisA root"):
            list_inputs(str(tmp_path), layout="visa")
        with pytest.raises(ValueError, match="no MVTec-AD images"):
            list_inputs(str(visa_sample_dir), layout="mvtec")

    def test_memory_filesystem(self, memfs, real_data_dir: Path):
        fs, root = memfs
        source = real_data_dir / "mvtec_ad_256" / "hazelnut"
        for path in source.rglob("*.png"):
            key = f"{root}/hazelnut/{path.relative_to(source).as_posix()}"
            fs.pipe_file(key, path.read_bytes())
        units = list_inputs(f"memory://{root}")
        local = list_inputs(str(source))
        assert structure(units, f"memory://{root}/hazelnut") == structure(local, local_url(source))
        assert all(u.uri.startswith(f"memory://{root}/") for u in units)
        got = sorted(summary(out, f"memory://{root}") for out in read_all(units))
        assert got == expected_mvtec(source)


# ----------------------------------------------------------------------------- reading files
class TestReadImageFiles:
    def test_mvtec_elements(self, real_data_dir: Path):
        units = list_inputs(str(real_data_dir / "mvtec_ad" / "bottle"))
        outputs = read_all(units)
        assert all(isinstance(o, ImageElement) for o in outputs)
        for unit, element in zip(units, outputs):
            assert element.source_uri == unit.uri
            assert element.image_id == make_image_id(unit.uri)
            assert element.image.shape == (900, 900, 3) and element.gt_mask.shape == (900, 900)
            assert element.label == unit.label and element.category == "bottle"
            assert element.gt_mask.any() == bool(unit.label)  # good → all-False ground truth
        root = real_data_dir / "mvtec_ad"
        got = sorted(summary(o, local_url(root)) for o in outputs)
        assert got == expected_mvtec(root / "bottle")

    def test_visa_elements(self, visa_sample_dir: Path):
        outputs = read_all(list_inputs(str(visa_sample_dir)))
        assert sorted(summary(o, local_url(visa_sample_dir)) for o in outputs) == expected_visa(
            visa_sample_dir
        )

    def test_mask_problems_are_failures(self, real_data_dir: Path, tmp_path: Path):
        category = tmp_path / "hazelnut"
        shutil.copytree(real_data_dir / "mvtec_ad_256" / "hazelnut", category)
        gt = category / "ground_truth"
        (gt / "crack" / "000_mask.png").unlink()
        (gt / "cut" / "000_mask.png").write_bytes(mask_png(128, 128))
        (gt / "hole" / "000_mask.png").write_bytes(b"garbage")
        (category / "test" / "print" / "000.png").write_bytes(png(256, 256)[:300])
        failures = {
            o.source_uri[len(local_url(category)) + 1:]: (o.stage, o.error_type)
            for o in read_all(list_inputs(str(category)))
            if isinstance(o, Failure)
        }
        assert failures == {
            "test/crack/000.png": (STAGE_READ, "MissingMask"),
            "test/cut/000.png": (STAGE_DECODE, "MaskSizeMismatch"),
            "test/hole/000.png": (STAGE_DECODE, "BadMask"),
            "test/print/000.png": (STAGE_DECODE, "TruncatedImage"),
        }

    def test_missing_files_are_failures(self, tmp_path: Path):
        (tmp_path / "split_csv").mkdir()
        (tmp_path / "split_csv" / "1cls.csv").write_text(
            "object,split,label,image,mask\n"
            "x,test,normal,x/gone.JPG,\n"
            "x,test,anomaly,x/here.png,\n"
        )
        (tmp_path / "x").mkdir()
        (tmp_path / "x" / "here.png").write_bytes(png(40, 40))
        outputs = read_all(list_inputs(str(tmp_path)))
        assert [(type(o).__name__, o.stage, o.error_type) for o in outputs] == [
            ("Failure", STAGE_READ, "FileNotFound"),  # x/gone.JPG
            ("Failure", STAGE_READ, "MissingMask"),  # x/here.png: anomaly row without a mask
        ]
        assert outputs[0].image_id == make_image_id(outputs[0].source_uri)

    def test_broken_files_each_give_their_outcome(self, broken_inputs: BrokenInputs):
        base = local_url(broken_inputs.root)
        outputs = read_all(list_inputs(str(broken_inputs.root)))
        assert sorted(summary(o, base) for o in outputs) == sorted(expected_broken(broken_inputs))
        for element in (o for o in outputs if isinstance(o, ImageElement)):
            case = broken_inputs.case(summary(element, base)[1])
            if case.note:
                assert any(case.note in n for n in element.notes), (case, element.notes)


# ----------------------------------------------------------------------------- tar shards
def sample_shard() -> tuple[bytes, list[tuple]]:
    """A WebDataset-style shard exercising every rule, with the expected (key, outcome) list."""
    members = [
        ("s000.png", png(40, 40)),
        ("s000.mask.png", mask_png(40, 40)),  # empty mask → label 0
        ("s001.jpg", jpeg(48, 64)),
        ("s001.mask.png", mask_png(48, 64, slice(4, 12))),  # 8×8 defect → label 1
        ("s001.category.txt", b"widget\n"),
        ("sub/s002.rgb.png", png(36, 36, mode="L")),  # no mask → no ground truth
        ("sub/s002.cls", b"gizmo"),
        ("s003.cls", b"orphan"),  # no image member
        ("s004.png", png(40, 40)),
        ("s004.jpg", jpeg(40, 40)),  # two images
        ("s005.png", b"not a png"),
        ("s006.png", png(40, 40)),
        ("s006.mask.png", mask_png(20, 20)),
        ("s000.png", png(40, 40)),  # key seen before: one DuplicateKey row covers both runs
    ]
    expected = [
        ("s000", "failure", STAGE_READ, "DuplicateKey"),
        ("s001", "image", "widget", 1, (48, 64, 3), 64),
        ("sub/s002", "image", "gizmo", None, (36, 36, 3), None),
        ("s003", "failure", STAGE_READ, "NoImageInSample"),
        ("s004", "failure", STAGE_READ, "AmbiguousSample"),
        ("s005", "failure", STAGE_DECODE, "NotAnImage"),
        ("s006", "failure", STAGE_DECODE, "MaskSizeMismatch"),
    ]
    return tar_bytes(members), expected


def tar_outcomes(outputs: list[ImageElement | Failure], shard_uri: str) -> list[tuple]:
    rows = []
    for out in outputs:
        key = out.source_uri.split("#", 1)[1]
        assert out.source_uri == f"{shard_uri}#{key}"
        assert out.image_id == make_image_id(shard_uri, key)
        if isinstance(out, Failure):
            rows.append((key, "failure", out.stage, out.error_type))
        else:
            pixels = None if out.gt_mask is None else int(out.gt_mask.sum())
            rows.append((key, "image", out.category, out.label, out.image.shape, pixels))
    return rows


class TestTarShards:
    @pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tgz"])
    def test_samples_are_grouped_and_checked(self, tmp_path: Path, suffix: str):
        data, expected = sample_shard()
        path = tmp_path / f"shard-000{suffix}"
        path.write_bytes(data if suffix == ".tar" else gzip.compress(data))
        units = list_inputs(str(tmp_path))
        assert [u.kind for u in units] == ["tar"]
        assert tar_outcomes(read_all(units), units[0].uri) == expected

    def test_memory_shard(self, memfs):
        fs, root = memfs
        data, expected = sample_shard()
        fs.pipe_file(f"{root}/shard.tar.gz", gzip.compress(data))
        units = list_inputs(f"memory://{root}/*.tar.gz")
        assert tar_outcomes(read_all(units), f"memory://{root}/shard.tar.gz") == expected

    def test_truncated_shard_keeps_samples_read_before(self, broken_inputs: BrokenInputs):
        [unit] = list_inputs(str(broken_inputs.root / "corrupt.tar"))
        first, failure = read_all([unit])
        assert isinstance(first, ImageElement) and first.source_uri == unit.uri + "#s0"
        assert isinstance(failure, Failure)
        assert (failure.source_uri, failure.image_id) == (unit.uri, make_image_id(unit.uri))
        assert (failure.stage, failure.error_type) == (STAGE_READ, "UnreadableShard")
        assert "after 1 samples" in failure.message

    @pytest.mark.parametrize(
        "name, content",
        [
            ("garbage.tar", b"hello" * 300),
            ("empty.tar", b""),
            ("truncated.tar.gz", gzip.compress(tar_bytes([("a.png", png(64, 64))]))[:400]),
            ("not-gzip.tgz", b"\x1f\x8b" + b"\x00" * 600),
        ],
    )
    def test_unreadable_shard_is_one_failure(self, tmp_path: Path, name: str, content: bytes):
        (tmp_path / name).write_bytes(content)
        [unit] = list_inputs(str(tmp_path / name))
        [failure] = read_all([unit])
        assert isinstance(failure, Failure)
        assert (failure.stage, failure.error_type) == (STAGE_READ, "UnreadableShard")
        assert failure.image_id == make_image_id(unit.uri)

    def test_missing_shard(self, tmp_path: Path):
        uri = local_url(tmp_path / "gone.tar")
        [failure] = read_all([InputUnit("tar", uri, "object")])
        assert (failure.error_type, failure.source_uri) == ("FileNotFound", uri)


# ----------------------------------------------------------------------------- gs:// emulator
@pytest.mark.timeout(120)
class TestGcs:
    def test_listing_matches_local(self, gcs_emulator: GcsEmulator, real_data_dir, visa_sample_dir):
        for local_root, prefix in [
            (real_data_dir / "mvtec_ad_256", "listing/mvtec"),
            (visa_sample_dir, "listing/visa"),
        ]:
            url = gcs_emulator.upload_tree(local_root, prefix)
            remote = list_inputs(url + "/")
            local = list_inputs(str(local_root))
            assert structure(remote, url) == structure(local, local_url(local_root))
            assert all(u.uri.startswith(url + "/") for u in remote)
        with pytest.raises(ValueError, match="gs://clipsam-test/listing/nothing"):
            list_inputs(gcs_emulator.url("listing/nothing"))

    def test_reading_matches_local(self, gcs_emulator: GcsEmulator, real_data_dir: Path):
        local_root = real_data_dir / "mvtec_ad_256" / "transistor"
        url = gcs_emulator.upload_tree(local_root, "reading/transistor")
        data, expected = sample_shard()
        shard_key = f"{gcs_emulator.bucket}/reading/shards/a.tar.gz"
        gcs_emulator.fs.pipe_file(shard_key, gzip.compress(data))
        remote, local = read_all(list_inputs(url)), read_all(list_inputs(str(local_root)))
        for r, l in zip(remote, local):
            assert r.image_id == make_image_id(r.source_uri) != l.image_id
            np.testing.assert_array_equal(r.image, l.image)
            np.testing.assert_array_equal(r.gt_mask, l.gt_mask)
            assert (r.label, r.category) == (l.label, l.category)
        shard_url = gcs_emulator.url("reading/shards/a.tar.gz")
        assert tar_outcomes(read_all(list_inputs(shard_url)), shard_url) == expected


# ----------------------------------------------------------------------------- Beam pipelines
def run_read_pipeline(read_images: ReadImages, bases: list[str], expected: list[tuple],
                      options: PipelineOptions):
    """Run `read_images` and assert the exact multiset of outcomes (images and failures)."""
    summarise = summarise_against(bases)
    pipeline = beam.Pipeline(runner="FnApiRunner", options=options)
    read = pipeline | read_images
    outcomes = (
        (read[IMAGES], read[FAILURES])
        | beam.Flatten()
        | beam.Map(summarise)
    )
    assert_that(outcomes, equal_to(expected))
    result = pipeline.run()
    result.wait_until_finish()
    return result


def counter(result, name: str) -> int:
    query = beam.metrics.MetricsFilter().with_namespace(METRICS_NAMESPACE).with_name(name)
    return sum(c.committed for c in result.metrics().query(query)["counters"])


@pytest.mark.timeout(180)
class TestReadImagesPipeline:
    def test_in_process_mixed_input(self, broken_inputs, visa_sample_dir, real_data_dir):
        mvtec = real_data_dir / "mvtec_ad_256"
        units = (
            list_inputs(str(broken_inputs.root))
            + list_inputs(str(visa_sample_dir))
            + list_inputs(str(mvtec), category="hazelnut")
        )
        expected = (
            expected_broken(broken_inputs) + expected_visa(visa_sample_dir)
            + expected_mvtec(mvtec / "hazelnut")
        )
        bases = [local_url(broken_inputs.root), local_url(visa_sample_dir), local_url(mvtec)]
        result = run_read_pipeline(ReadImages(units), bases, expected, PipelineOptions())
        failures = sum(1 for row in expected if row[0] == "failure")
        assert counter(result, "read_failed") == failures == 8
        assert counter(result, "read_ok") == len(expected) - failures == 21

    def test_inputs_listed_inside_the_pipeline(self, broken_inputs, visa_sample_dir, real_data_dir, tmp_path):
        """The launcher's path: InputSpecs listed by the pipeline give the same outcomes as units
        listed beforehand; a file two inputs list is read once; an input that cannot be listed
        is one UnusableInput failure."""
        mvtec = real_data_dir / "mvtec_ad_256"
        bad_visa = tmp_path / "bad_visa"
        (bad_visa / "split_csv").mkdir(parents=True)
        (bad_visa / "split_csv" / "1cls.csv").write_bytes(b"object,split,label,image,mask\nx,test\n")
        specs = [InputSpec(str(broken_inputs.root)), InputSpec(str(visa_sample_dir)),
                 InputSpec(str(mvtec), category="hazelnut"), InputSpec(str(mvtec / "hazelnut"), layout="mvtec"),
                 InputSpec(str(bad_visa))]
        expected = (
            expected_broken(broken_inputs) + expected_visa(visa_sample_dir)
            + expected_mvtec(mvtec / "hazelnut") + [("failure", "", "UnusableInput")]
        )
        bases = [local_url(broken_inputs.root), local_url(visa_sample_dir), local_url(mvtec), str(bad_visa)]
        run_read_pipeline(ReadImages(specs), bases, expected, PipelineOptions())

    def test_from_url_lists_at_construction(self, tmp_path: Path, visa_sample_dir: Path):
        with pytest.raises(ValueError, match="matches no files"):
            ReadImages.from_url(str(tmp_path / "nope"))
        with pytest.raises(ValueError, match="at least one input"):
            ReadImages([])
        read_images = ReadImages.from_url(str(visa_sample_dir), split="train", min_side=200)
        expected = [("failure", "candle_synth/Data/Images/Normal/002.JPG", "ImageTooSmall")]
        run_read_pipeline(read_images, [local_url(visa_sample_dir)], expected, PipelineOptions())

    def test_worker_subprocesses_read_from_gcs(
        self, gcs_emulator: GcsEmulator, broken_inputs, real_data_dir, monkeypatch
    ):
        # Worker subprocesses see only the environment: the emulator endpoint and anonymous
        # gs:// credentials (conftest) and where to import this project from.
        paths = [str(REPO), os.environ.get("PYTHONPATH")]
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, paths)))
        assert os.environ["STORAGE_EMULATOR_HOST"] == gcs_emulator.endpoint
        run_id = uuid.uuid4().hex[:8]
        broken_url = gcs_emulator.upload_tree(broken_inputs.root, f"mp-{run_id}/broken")
        mvtec_root = real_data_dir / "mvtec_ad_256"
        gcs_emulator.upload_tree(mvtec_root / "transistor", f"mp-{run_id}/mvtec/transistor")
        mvtec_url = gcs_emulator.url(f"mp-{run_id}/mvtec")
        units = list_inputs(broken_url) + list_inputs(mvtec_url)
        expected = expected_broken(broken_inputs) + expected_mvtec(mvtec_root / "transistor")
        options = PipelineOptions(
            ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
        )
        run_read_pipeline(ReadImages(units), [broken_url, mvtec_url], expected, options)
