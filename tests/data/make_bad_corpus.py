"""Generate a corpus of bad inputs: one case (at least) per class of README "Bad input".

`make_bad_corpus(root)` writes the corpus under `root` and returns what reading it must give:

- ``pixel_limit``: the `DecodeLimits.pixel_limit` the expectations hold for (small, so a tar
  member over `DecodeLimits.member_bytes` costs little to generate);
- ``inputs``: {input path relative to root: layout} — each is one `list_inputs` call;
- ``expected``: one entry per row reading the inputs must give (a listing, a file, a tar sample,
  or a whole shard): ``(input, source, outcome)`` where `source` is the row's ``source_uri``
  relative to root (``<shard>#<key>`` for samples; undecodable bytes as ``\\xNN``) and `outcome` is
  ``("failure", error_type)`` or ``("record", category, label, (H, W, 3), mask pixels or None,
  note substring or None)``;
- ``skipped``: {input: {reason: files}} as `scan_inputs` must count them;
- ``malformed``: {input: regex}: roots whose listing must raise ValueError matching it.

Nothing here is committed: run ``python tests/data/make_bad_corpus.py`` to write
``tests/data/bad/`` (git-ignored) for a look, the tests build their own copy in a temp folder.
"""
from __future__ import annotations

import gzip
import io
import os
import shutil
import struct
import sys
import tarfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

PIXEL_LIMIT = 1_000_000
MEMBER_LIMIT = PIXEL_LIMIT * 8 + (1 << 20)  # inputs.reader.DecodeLimits.member_bytes


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def noise(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width×height but holds almost no data: a decompression bomb that
    costs nothing to create; only a reader that checks the header before decoding is safe."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def _mask(height: int, width: int, box: slice) -> tuple[bytes, int]:
    pixels = np.zeros((height, width), np.uint8)
    pixels[box, box] = 255
    return encode(Image.fromarray(pixels), "PNG"), int(np.count_nonzero(pixels))


def _exif_rotated_jpeg() -> bytes:
    pixels = np.zeros((40, 64, 3), dtype=np.uint8)
    pixels[:, :32] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(Image.fromarray(pixels), "JPEG", quality=95, exif=exif.tobytes())


def _float_tiff(values: np.ndarray) -> bytes:
    return encode(Image.fromarray(values.astype(np.float32), mode="F"), "TIFF")


def _tar(members: list[tuple]) -> bytes:
    """members: (name, bytes) for regular files, or (name, tarfile type, linkname) for others."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for member in members:
            info = tarfile.TarInfo(member[0])
            if len(member) == 2:
                info.size = len(member[1])
                tar.addfile(info, io.BytesIO(member[1]))
            else:
                info.type, info.linkname = member[1], member[2]
                if info.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
                    info.devmajor, info.devminor = 1, 3
                tar.addfile(info)
    return buf.getvalue()


def _header_offsets(members: list[tuple[str, bytes]]) -> list[int]:
    offsets, at = [], 0
    for _, data in members:
        offsets.append(at)
        at += 512 + -(-len(data) // 512) * 512
    return offsets


def make_bad_corpus(root: Path) -> dict:
    root = Path(root)
    rng = np.random.default_rng(11)
    expected: list[tuple] = []
    skipped: dict[str, dict[str, int]] = {}

    def record(inp: str, source: str, shape: tuple, note: str | None = None, category: str = "object",
               label: int | None = None, pixels: int | None = None) -> None:
        expected.append((inp, source, ("record", category, label, shape, pixels, note)))

    def failure(inp: str, source: str, error_type: str) -> None:
        expected.append((inp, source, ("failure", error_type)))

    # ---- a folder of files and shards (layout auto) --------------------------------------------
    files = root / "files"
    files.mkdir(parents=True)
    png40 = encode(noise(rng, 40, 40), "PNG")
    png64 = encode(noise(rng, 64, 64), "PNG")
    jpeg64 = encode(noise(rng, 64, 64), "JPEG", quality=90)
    gray16 = np.linspace(0, 65535, 48 * 40).reshape(40, 48).astype(np.uint16)
    rgba = np.concatenate([np.asarray(noise(rng, 40, 40)), np.full((40, 40, 1), 128, np.uint8)], 2)
    float01 = np.linspace(0.0, 1.0, 40 * 48).reshape(40, 48)
    plain = [
        ("empty.png", b"", "EmptyFile"),
        ("random.png", rng.bytes(2048), "NotAnImage"),
        ("truncated.png", png64[: len(png64) // 2], "TruncatedImage"),
        ("truncated.jpg", jpeg64[: len(jpeg64) * 2 // 3], "TruncatedImage"),
        ("text.jpg", b"this is a text file, not a JPEG\n", "NotAnImage"),
        ("tiny.png", encode(noise(rng, 16, 16), "PNG"), "ImageTooSmall"),
        ("huge.png", png_header_only(20000, 20000), "ImageTooLarge"),
        ("float255.tif", _float_tiff(float01 * 255.0), "UnsupportedPixelRange"),
        ("floatnan.tif", _float_tiff(np.where(float01 > 0.5, np.nan, float01)), "UnsupportedPixelRange"),
    ]
    for name, data, error_type in plain:
        (files / name).write_bytes(data)
        failure("files", f"files/{name}", error_type)
    converted = [
        ("gray16.png", encode(Image.fromarray(gray16), "PNG"), (40, 48, 3), "I;16 grey scaled"),
        ("rgba.png", encode(Image.fromarray(rgba), "PNG"), (40, 40, 3), "alpha dropped"),
        ("cmyk.jpg", encode(Image.new("CMYK", (48, 48), (0, 128, 255, 0)), "JPEG", quality=95), (48, 48, 3),
         "mode CMYK converted"),
        ("palette.png", encode(noise(rng, 40, 40).quantize(16), "PNG"), (40, 40, 3), "mode P converted"),
        ("gray.png", encode(noise(rng, 40, 40).convert("L"), "PNG"), (40, 40, 3), "mode L converted"),
        ("exif_rotated.jpg", _exif_rotated_jpeg(), (64, 40, 3), "EXIF orientation 6"),
        ("float01.tif", _float_tiff(float01), (40, 48, 3), "32-bit float"),
        ("a::b.png", png40, (40, 40, 3), None),  # fsspec would read '::' as a chain
    ]
    for name, data, shape, note in converted:
        (files / name).write_bytes(data)
        record("files", f"files/{name}", shape, note)
    with open(os.fsencode(files) + b"/bad\xff.png", "wb") as handle:  # not valid UTF-8
        handle.write(png40)
    failure("files", "files/bad\\xff.png", "NonUtf8Name")
    (files / "notes.txt").write_text("not an input\n")
    skipped["files"] = {"unsupported extension": 1}

    # tar shards
    def shard(name: str, data: bytes) -> str:
        (files / name).write_bytes(data)
        return f"files/{name}"

    links = shard("links.tar", _tar([
        ("s0.png", png40),
        ("s1.png", tarfile.SYMTYPE, "s0.png"),
        ("s2.png", tarfile.LNKTYPE, "s0.png"),
        ("s3.png", tarfile.FIFOTYPE, ""),
        ("s4.png", tarfile.CHRTYPE, ""),
        ("s5.png", tarfile.BLKTYPE, ""),
        ("d", tarfile.DIRTYPE, ""),  # directories are ignored
        ("s6.png", png40),
        ("s6.cls", tarfile.SYMTYPE, "/etc/hostname"),  # a link among regular members
    ]))
    record("files", f"{links}#s0", (40, 40, 3))
    for key in ("s1", "s2", "s3", "s4", "s5", "s6"):
        failure("files", f"{links}#{key}", "UnsupportedMember")
    dup = shard("dup-member.tar", _tar([("k0.png", png40), ("k0.png", png40), ("k1.png", png40)]))
    failure("files", f"{dup}#k0", "DuplicateMember")
    record("files", f"{dup}#k1", (40, 40, 3))
    split_members = [("a.png", png40), ("b.png", png40), ("a.mask.png", _mask(40, 40, slice(2, 6))[0])]
    split = shard("split-key.tar", _tar(split_members))
    failure("files", f"{split}#a", "DuplicateKey")  # one row for both runs of key a
    record("files", f"{split}#b", (40, 40, 3))
    cut_members = [("s0.png", png40), ("s1.png", png40), ("s2.png", png40)]
    cut = shard("cut-header.tar", _tar(cut_members)[: _header_offsets(cut_members)[2] + 100])
    record("files", f"{cut}#s0", (40, 40, 3))
    failure("files", cut, "UnreadableShard")  # s1 may have had more members: covered by this row
    big = shard("oversize.tar.gz", gzip.compress(_tar([
        ("s0.png", png40), ("big.png", bytes(MEMBER_LIMIT + 1)), ("s2.png", png40),
    ]), compresslevel=1))
    record("files", f"{big}#s0", (40, 40, 3))
    failure("files", f"{big}#big", "MemberTooLarge")
    record("files", f"{big}#s2", (40, 40, 3))
    bomb = shard("bomb.tar", _tar([("bomb.png", png_header_only(5000, 5000) + bytes(100_000)), ("ok.png", png40)]))
    failure("files", f"{bomb}#bomb", "ImageTooLarge")
    record("files", f"{bomb}#ok", (40, 40, 3))
    badname = shard("badname.tar", _tar([("\udcff.png", png40), ("ok.png", png40)]))
    failure("files", f"{badname}#\\xff", "NonUtf8Name")
    record("files", f"{badname}#ok", (40, 40, 3))
    failure("files", shard("empty.tar", _tar([])), "EmptyShard")
    failure("files", shard("dirs-only.tar", _tar([("d", tarfile.DIRTYPE, "")])), "EmptyShard")

    # ---- a folder whose name is glob syntax ------------------------------------------------------
    (root / "in[1]").mkdir()
    (root / "in[1]" / "ok.png").write_bytes(png40)
    record("in[1]", "in[1]/ok.png", (40, 40, 3))
    skipped["in[1]"] = {}

    # ---- a VisA root: repeated rows, a NUL byte in a path ----------------------------------------
    visa = root / "visa"
    (visa / "split_csv").mkdir(parents=True)
    (visa / "img").mkdir()
    (visa / "mask").mkdir()
    (visa / "img" / "000.png").write_bytes(png40)
    (visa / "img" / "001.png").write_bytes(png40)
    (visa / "img" / "train.png").write_bytes(png40)
    mask, mask_pixels = _mask(40, 40, slice(4, 12))
    (visa / "mask" / "001.png").write_bytes(mask)
    (visa / "readme.txt").write_text("VisA-style root\n")
    (visa / "split_csv" / "1cls.csv").write_text(
        "object,split,label,image,mask\n"
        "widget,test,normal,img/000.png,\n"  # line 2
        "widget,test,anomaly,img/001.png,mask/001.png\n"  # line 3
        "widget,test,anomaly,img/000.png,mask/001.png\n"  # line 4: img/000.png again, as anomalous
        "widget,test,normal,img/000.png,\n"  # line 5: an exact repeat of line 2
        "widget,test,normal,img/0\x0002.png,\n"  # line 6: NUL byte in the path
        "widget,train,normal,img/train.png,\n"  # another split: its file is skipped
    )
    record("visa", "visa/img/000.png", (40, 40, 3), category="widget", label=0, pixels=0)
    record("visa", "visa/img/001.png", (40, 40, 3), category="widget", label=1, pixels=mask_pixels)
    failure("visa", "visa/img/000.png", "DuplicateInput")
    failure("visa", "visa/img/000.png", "DuplicateInput")
    failure("visa", "visa/img/0\\x0002.png", "InvalidPath")
    skipped["visa"] = {"unsupported extension": 1, "VisA file not named by the split's CSV rows": 1}

    # ---- an MVTec-AD category: files outside test/<defect>/ are counted, a mask is missing -------
    mvtec = root / "mvtec" / "widget"
    for folder in ("test/good", "test/crack", "ground_truth/crack", "train/good"):
        (mvtec / folder).mkdir(parents=True)
    (mvtec / "test" / "good" / "000.png").write_bytes(png40)
    (mvtec / "test" / "crack" / "000.png").write_bytes(png40)
    (mvtec / "test" / "crack" / "001.png").write_bytes(png40)
    crack, crack_pixels = _mask(40, 40, slice(10, 20))
    (mvtec / "ground_truth" / "crack" / "000_mask.png").write_bytes(crack)
    (mvtec / "ground_truth" / "crack" / "009_mask.png").write_bytes(crack)  # no such image
    (mvtec / "train" / "good" / "000.png").write_bytes(png40)
    (mvtec / "license.txt").write_text("CC BY-NC-SA 4.0\n")
    record("mvtec/widget", "mvtec/widget/test/good/000.png", (40, 40, 3), category="widget", label=0, pixels=0)
    record("mvtec/widget", "mvtec/widget/test/crack/000.png", (40, 40, 3), category="widget", label=1,
           pixels=crack_pixels)
    failure("mvtec/widget", "mvtec/widget/test/crack/001.png", "MissingMask")
    skipped["mvtec/widget"] = {
        "unsupported extension": 1,
        "MVTec-AD image outside <split>/<defect>/": 1,
        "MVTec-AD mask of no listed image": 1,
    }

    # ---- malformed listings: the whole input is refused with a ValueError naming the line --------
    malformed: dict[str, str] = {}
    for name, text, pattern in [
        ("visa-short-row", "object,split,label,image,mask\nwidget,test,normal,img/000.png,\nwidget,test\n",
         r"1cls\.csv line 3: 2 fields, the header has 5"),
        ("visa-long-row", "object,split,label,image,mask\nwidget,test,normal,img/000.png,,extra\n",
         r"1cls\.csv line 2: 6 fields, the header has 5"),
        ("visa-empty-image", "object,split,label,image,mask\nwidget,test,normal,,\n",
         r"1cls\.csv line 2: empty image path"),
    ]:
        (root / "malformed" / name / "split_csv").mkdir(parents=True)
        (root / "malformed" / name / "split_csv" / "1cls.csv").write_text(text)
        malformed[f"malformed/{name}"] = pattern
    (root / "malformed" / "visa-not-utf8" / "split_csv").mkdir(parents=True)
    (root / "malformed" / "visa-not-utf8" / "split_csv" / "1cls.csv").write_bytes(
        b"object,split,label,image,mask\nwidget,test,normal,img/\xff.png,\n")
    malformed["malformed/visa-not-utf8"] = r"1cls\.csv line 2: not UTF-8"

    inputs = {"files": "auto", "in[1]": "auto", "visa": "visa", "mvtec/widget": "auto"}
    return {"pixel_limit": PIXEL_LIMIT, "inputs": inputs, "expected": expected, "skipped": skipped,
            "malformed": malformed}


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "bad"
    if out.exists():
        shutil.rmtree(out)
    corpus = make_bad_corpus(out)
    print(f"wrote {len(corpus['expected'])} expected rows from {len(corpus['inputs'])} inputs "
          f"(+ {len(corpus['malformed'])} malformed roots) under {out}")
