"""`stage`: put a real profile's CLIP and SAM (and optionally UMCI) weights into a model store.

Sources. Each `--<role>_checkpoint` is an http(s) URL, any other fsspec URL (`gs://`, `s3://`,
`file://`, ...) or a local path (relative paths are resolved against the caller's working
directory). URLs are streamed to a temporary folder (`$TMPDIR`), with progress lines on stdout for
large files; local files (paths and `file://` URLs) are read where they are. Without a flag, CLIP
comes from OpenAI's official TorchScript archive and SAM from Meta's official `.pth`
(`official_file`); when that download cannot even connect (no network, DNS failure, connection
refused, timeout) the error says which flag to pass and which file to fetch elsewhere.

Accepted files are whatever `convert.read_checkpoint` accepts (detected from the file's content):
OpenAI CLIP TorchScript archives (read without running their code; accepted when their sha256 is
OpenAI's published one for the profile, or the one given with `--clip_sha256`), OpenAI-named state
dicts, open_clip `.bin` / `.safetensors`, SAM `.pth` / `.safetensors`. UMCI weights
(`--umci_checkpoint`) are a `.safetensors` file or a `torch.save` state dict (read tensors-only)
that loads strictly into `UMCI(config.umci)`.

Each file is converted once, here, to float32 `.safetensors` named `<role>_<sha256[:16]>.safetensors`
and published with the manifest, which records per role (`provenance[role]`) the source, its
format, its sha256, who vouched for that sha256 and the converted file's sha256 (see
`convert.provenance`). Without `--umci_checkpoint` the profile keeps the UMCI weights (and their
provenance) the store already has, if any.

Every wrong input raises StageError with one line that names the flag it came from.
"""
from __future__ import annotations

import errno
import gc
import hashlib
import http.client
import os
import re
import socket
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import fsspec

from clipsam.umci import UMCI

from . import convert
from .convert import PUBLISHED_CLIP_TORCHSCRIPT, PublishedFile
from .errors import ManifestNotFoundError, StageError, one_line
from .manifest import Manifest
from .profiles import Profile, get_profile
from .store import CHUNK, ModelStore

PROGRESS_MIN_BYTES = 32 << 20  # files at least this large get progress lines
DEFAULT_TIMEOUT = 60.0
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_OFFLINE_ERRNOS = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.ECONNREFUSED, errno.ETIMEDOUT}


@dataclass(frozen=True)
class Source:
    """Where one role's file comes from.

    flag: the command-line flag (`--clip_checkpoint`, ...). shown: how errors and the manifest
    name it (a URL without credentials, query or fragment; a local file's name).
    local: the local file to read in place, or None when `url` must be downloaded.
    official: the official file used because the flag was not given (None otherwise).
    """

    flag: str
    shown: str
    local: Path | None = None
    url: str | None = None
    official: PublishedFile | None = None


def official_file(profile: Profile, role: str) -> PublishedFile | None:
    """The official file `stage` downloads for `role` ("clip" or "sam") when no flag names one:
    OpenAI's TorchScript archive (pinned sha256, `convert.PUBLISHED_CLIP_TORCHSCRIPT`) or Meta's SAM
    checkpoint (`profile.sam_checkpoint_url`; its sha256 is not published, so it is "" and the
    file is checked by loading it strictly). None for profiles without public weights (`tiny`)."""
    if role == "clip":
        return PUBLISHED_CLIP_TORCHSCRIPT.get(profile.name)
    if role == "sam" and profile.sam_checkpoint_url:
        url = profile.sam_checkpoint_url
        return PublishedFile(url.rsplit("/", 1)[-1], url, "")
    return None


def shown_url(url: str) -> str:
    """`url` without user/password, query string or fragment (signed URLs carry secrets there)."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def resolve_source(value: str | None, flag: str, official: PublishedFile | None = None) -> Source | None:
    """The Source of one flag's value (None when neither the flag nor an official file is given).

    A local path (relative to the current directory) or `file://` URL must be an existing file;
    StageError naming `flag` otherwise. Other URLs are checked only when downloaded.
    """
    if value is None:
        if official is None:
            return None
        return Source(flag, official.url, url=official.url, official=official)
    if not value.strip():
        raise StageError(f"{flag}: empty value; give a URL or a local file path")
    if _URL.match(value):
        parts = urllib.parse.urlsplit(value)
        if parts.scheme.lower() != "file":
            return Source(flag, shown_url(value), url=value)
        if parts.netloc not in ("", "localhost"):
            raise StageError(f"{flag} {value}: a file:// URL must name a local file (file:///path), not host {parts.netloc!r}")
        path = Path(urllib.parse.unquote(parts.path))
    else:
        path = Path(value).expanduser()
    path = path if path.is_absolute() else Path.cwd() / path
    if not path.exists():
        raise StageError(f"{flag} {value}: no such file ({path})")
    if not path.is_file():
        raise StageError(f"{flag} {value}: {path} is not a regular file")
    return Source(flag, path.name, local=path)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror):
        return f"DNS lookup failed: {one_line(exc.strerror or exc, 80)}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return one_line(exc.strerror, 120)
    return one_line(exc, 160) or type(exc).__name__


def _cannot_connect(exc: BaseException) -> bool:
    return isinstance(exc, (socket.gaierror, ConnectionRefusedError, TimeoutError, socket.timeout)) or (
        isinstance(exc, OSError) and exc.errno in _OFFLINE_ERRNOS)


def _download_failed(source: Source, reason: str, offline: bool, others: tuple[Source, ...] = ()) -> StageError:
    if source.official is not None:
        name, url = source.official.name, source.official.url
        where = "this machine seems to be offline" if offline else "the download failed"
        also = "".join(f"; likewise {o.flag}=/path/to/{o.official.name} from {o.official.url}"
                       for o in others if o.official is not None) if offline else ""
        return StageError(f"{source.flag} not given, and the official {name} cannot be downloaded from {url} "
                          f"({reason}; {where}): fetch {name} from that URL elsewhere and pass "
                          f"{source.flag}=/path/to/{name}{also}")
    hint = ("; if this machine is offline, download the file elsewhere and pass its local path"
            if offline else "")
    return StageError(f"{source.flag} {source.shown}: cannot download ({reason}){hint}")


class _Progress:
    """Progress lines for one download: on a terminal one line rewritten in place, otherwise a line
    per tenth of the file (per 256 MiB when its size is unknown). Silent for small files."""

    def __init__(self, label: str, total: int, stream: IO[str]) -> None:
        self.label, self.total, self.stream = label, total, stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.active = total >= PROGRESS_MIN_BYTES or total == 0
        self.next_mark = 0.1 if total else 256 << 20
        self.shown = False

    def update(self, size: int) -> None:
        if not self.active or (not self.total and size < PROGRESS_MIN_BYTES and not self.shown):
            return
        if self.total:
            if size / self.total < self.next_mark:
                return
            self.next_mark = (int(size / self.total * 10) + 1) / 10
            text = f"downloading {self.label}: {int(100 * size / self.total)}% of {self.total / 2**20:.0f} MiB"
        else:
            if size < self.next_mark:
                return
            self.next_mark = (size // (256 << 20) + 1) * (256 << 20)
            text = f"downloading {self.label}: {size / 2**20:.0f} MiB"
        self.shown = True
        self.stream.write(("\r" + text) if self.tty else text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.shown and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _open_url(source: Source, timeout: float, others: tuple[Source, ...] = ()) -> tuple[Any, int]:
    """(readable, size in bytes or 0) for a URL Source; StageError naming its flag otherwise."""
    url = source.url
    assert url is not None
    if url.lower().startswith(("http://", "https://")):
        request = urllib.request.Request(url, headers={"User-Agent": "clipsam-pipeline model_store stage"})
        try:
            handle = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            raise _download_failed(source, f"HTTP {exc.code} {one_line(exc.reason, 60)}", offline=False) from None
        except urllib.error.URLError as exc:
            reason = exc.reason if isinstance(exc.reason, BaseException) else OSError(str(exc.reason))
            raise _download_failed(source, _reason(reason), _cannot_connect(reason), others) from None
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise _download_failed(source, _reason(exc), _cannot_connect(exc), others) from None
        return handle, int(handle.headers.get("Content-Length") or 0)
    try:
        handle = fsspec.open(url, "rb").open()
    except FileNotFoundError:
        raise StageError(f"{source.flag} {source.shown}: no such file") from None
    except ImportError as exc:
        raise StageError(f"{source.flag} {source.shown}: cannot open this kind of URL ({one_line(exc, 160)})") from None
    except Exception as exc:  # noqa: BLE001 - fsspec backends raise their own error types
        raise _download_failed(source, _reason(exc), _cannot_connect(exc)) from None
    return handle, int(getattr(handle, "size", 0) or 0)


def download(source: Source, dest: Path, *, timeout: float = DEFAULT_TIMEOUT, stream: IO[str] | None = None,
             others: tuple[Source, ...] = ()) -> str:
    """Stream a URL Source to `dest`; returns the file's sha256.

    `others`: official files still to be downloaded after this one; when this one cannot connect,
    the error names them too, so an offline user learns every file to fetch at once.

    StageError (one line, naming `source.flag`) for HTTP errors, unreachable hosts, a connection
    that ends before the announced size, and, for an official file with a published sha256, any
    other sha256. `dest` exists only once the download is complete.
    """
    stream = stream or sys.stdout
    digest, size = hashlib.sha256(), 0
    partial = dest.with_name(dest.name + ".part")
    handle, total = _open_url(source, timeout, others)
    progress = _Progress(source.official.name if source.official else source.shown, total, stream)
    try:
        with handle, open(partial, "wb") as out:
            while True:
                try:
                    block = handle.read(CHUNK)
                except (OSError, http.client.HTTPException, ValueError) as exc:
                    raise StageError(f"{source.flag} {source.shown}: download cut short after {size} "
                                     f"{'of ' + str(total) + ' ' if total else ''}bytes ({_reason(exc)})") from None
                if not block:
                    break
                out.write(block)
                digest.update(block)
                size += len(block)
                progress.update(size)
        progress.close()
        if total and size != total:
            raise StageError(f"{source.flag} {source.shown}: download cut short after {size} of {total} bytes")
        sha = digest.hexdigest()
        published = source.official.sha256 if source.official else ""
        if published and sha != published:
            raise StageError(f"{source.flag} not given, and the official {source.official.name} downloaded from "
                             f"{source.official.url} has sha256 {sha}, not the published {published}")
        os.replace(partial, dest)
        return sha
    finally:
        if partial.exists():
            partial.unlink()


def read_umci(path: Path, profile: Profile, *, flag: str = "--umci_checkpoint",
              source: str | None = None) -> convert.Checkpoint:
    """UMCI weights from a `.safetensors` file or a `torch.save` state dict (read tensors-only),
    as the state dict of `UMCI(profile.clipsam_config.umci)` after a strict load.

    StageError, one line naming `flag`, for anything that is not such a file: not a checkpoint,
    truncated, a TorchScript archive, a CLIP or SAM checkpoint, or weights of another shape.
    """
    where = f"{flag} {source or path.name}"
    fmt = convert.detect_format(path, flag=flag, source=source)
    if fmt == "torchscript":
        raise StageError(f"{where}: a TorchScript archive; UMCI weights are a .safetensors file or a torch.save state dict")
    sha = convert.sha256_file(path)
    raw = convert.read_raw_state(path, fmt, where=where)
    found = convert.identify_role(raw)
    if found in ("clip", "sam"):
        raise StageError(f"{where}: this is a {found.upper()} checkpoint, not UMCI weights; pass it as --{found}_checkpoint")
    module = UMCI(profile.clipsam_config.umci)
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing = [k for k in expected if k not in raw]
    unexpected = [k for k in raw if k not in expected]
    shaped = [k for k in expected if k in raw and tuple(raw[k].shape) != expected[k]]
    if shaped:
        key = shaped[0]
        raise StageError(f"{where}: UMCI weights of another size than profile {profile.name}: {key} has shape "
                         f"{list(raw[key].shape)}, expected {list(expected[key])}")
    if missing or unexpected:
        parts = [f"{len(keys)} {label} key{'s' if len(keys) > 1 else ''} ({', '.join(keys[:3])}"
                 f"{', ...' if len(keys) > 3 else ''})"
                 for label, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        raise StageError(f"{where}: does not fit profile {profile.name}'s UMCI: {'; '.join(parts)}")
    module.load_state_dict(raw, strict=True)
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    return convert.Checkpoint(state=state, role="umci", format=fmt, source=source or path.name, sha256=sha,
                              sha256_check="none")


def _check_sha_flag(value: str | None, flag: str) -> None:
    if value is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise StageError(f"{flag} {value!r}: not a sha256 (64 hexadecimal digits)")


def _open_store(to_url: str, profile: str) -> tuple[ModelStore, Manifest | None, bool]:
    """The target store, the profile's current manifest (None when it has none) and whether the
    profile folder was created here; creating it checks that the store is writable, so a bad
    `--to` fails before any download."""
    try:
        store = ModelStore(to_url)
    except (ValueError, ImportError, OSError) as exc:
        raise StageError(f"--to {to_url}: not a usable store URL ({one_line(exc, 160)})") from None
    try:
        previous = store.read_manifest(profile)
    except ManifestNotFoundError:
        previous = None
    folder = store._path(profile, "").rstrip("/")
    try:
        created = not store.fs.exists(folder)
        store.fs.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise StageError(f"--to {to_url}: cannot create {store.url(profile)} ({_reason(exc)})") from None
    return store, previous, created


def _remove_if_empty(store: ModelStore, profile: str) -> None:
    folder = store._path(profile, "").rstrip("/")
    try:
        if not store.fs.ls(folder):
            store.fs.rmdir(folder)
    except OSError:
        pass


def stage(
    profile_name: str,
    to_url: str,
    *,
    clip_checkpoint: str | None = None,
    clip_sha256: str | None = None,
    sam_checkpoint: str | None = None,
    sam_sha256: str | None = None,
    umci_checkpoint: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    stream: IO[str] | None = None,
    tmp_dir: str | None = None,
) -> Manifest:
    """Convert and publish a profile's weights into the store at `to_url`; returns the manifest.

    `*_checkpoint`: a URL or local path (see the module doc); None uses the official file of the
    profile (`official_file`), and StageError when it has none. `clip_sha256` / `sam_sha256`: the
    sha256 the file must have (and, for a TorchScript archive that is not OpenAI's published one,
    the permission to read it). `stream`: where progress and per-role summaries go (stdout).
    `tmp_dir`: where downloads and converted files are written before publishing (default
    `$TMPDIR`). Roles are processed one after another, each source deleted (when downloaded) and
    its tensors released before the next.
    """
    stream = stream or sys.stdout
    profile = get_profile(profile_name)
    _check_sha_flag(clip_sha256, "--clip_sha256")
    _check_sha_flag(sam_sha256, "--sam_sha256")
    sources = {
        "clip": resolve_source(clip_checkpoint, "--clip_checkpoint", official_file(profile, "clip")),
        "sam": resolve_source(sam_checkpoint, "--sam_checkpoint", official_file(profile, "sam")),
        "umci": resolve_source(umci_checkpoint, "--umci_checkpoint"),
    }
    for role in ("clip", "sam"):
        if sources[role] is None:
            raise StageError(f"--{role}_checkpoint is required for profile {profile.name!r}, which has no official "
                             "download (the tiny profile is built with `python -m model_store make-tiny`)")
    store, previous, created = _open_store(to_url, profile.name)
    try:
        return _convert_and_publish(profile, store, previous, sources,
                                    {"clip": clip_sha256, "sam": sam_sha256, "umci": None},
                                    timeout=timeout, stream=stream, tmp_dir=tmp_dir)
    except BaseException:
        if created:
            _remove_if_empty(store, profile.name)
        raise


def _convert_and_publish(profile: Profile, store: ModelStore, previous: Manifest | None,
                         sources: dict[str, Source | None], expected: dict[str, str | None], *,
                         timeout: float, stream: IO[str], tmp_dir: str | None) -> Manifest:
    config = profile.clipsam_config
    provenance: dict[str, Any] = {"created_by": "model_store stage"}
    files: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="clipsam-stage-", dir=tmp_dir) as tmp:
        order = [(role, source) for role, source in sources.items() if source is not None]
        for index, (role, source) in enumerate(order):
            path = source.local
            if path is None:
                path = Path(tmp) / f"{role}.download"
                later = tuple(s for _, s in order[index + 1:] if s.official is not None)
                download(source, path, timeout=timeout, stream=stream, others=later)
            try:
                if role == "umci":
                    checkpoint = read_umci(path, profile, flag=source.flag, source=source.shown)
                else:
                    checkpoint = convert.read_checkpoint(path, role, profile, flag=source.flag, source=source.shown,
                                                         expected_sha256=expected[role])
            finally:
                if source.local is None:
                    path.unlink(missing_ok=True)
            converted = Path(tmp) / f"{role}.safetensors"
            sha = convert.write_safetensors(checkpoint.state, converted,
                                            metadata={"profile": profile.name, "role": role,
                                                      "source_sha256": checkpoint.sha256})
            files[role] = converted.rename(Path(tmp) / f"{role}_{sha[:16]}.safetensors")
            provenance[role] = convert.provenance(checkpoint, sha)
            stream.write(f"{role}: {checkpoint.source} ({checkpoint.format}, sha256 {checkpoint.sha256[:16]}..., "
                         f"checked: {checkpoint.sha256_check}) -> {files[role].name}\n")
            stream.flush()
            del checkpoint
            gc.collect()
        kept = {}
        if "umci" not in files and previous is not None and "umci" in previous.files:
            kept = {"umci": previous.files["umci"]}
            provenance.update({k: v for k, v in previous.provenance.items() if k.startswith("umci")})
        manifest = Manifest(
            profile=profile.name,
            clip_config=profile.clip_config(),
            sam_config=dict(profile.sam_config),
            clipsam_config=config.to_dict(),
            files=kept,
            provenance=provenance,
        )
        try:
            return store.publish(manifest, files)
        except OSError as exc:
            raise StageError(f"--to {store.root}: cannot write {store.url(profile.name)} ({_reason(exc)})") from None

