"""Setup step: download and unpack Pascal VOC (2007 trainval, 2007 test, 2012 trainval).

The official tarballs are fetched from a mirror into a cache folder, verified by MD5 and
extracted into ``<dest>/VOCdevkit/VOC2007/...`` and ``<dest>/VOCdevkit/VOC2012/...``, the
layout that ``data.voc.load_voc`` reads. This is the only place in the project that downloads a
dataset, and it runs only when called explicitly.

- Downloads go to ``<tar>.part`` and resume with an HTTP Range request after an interruption
  (a server that ignores Range answers 200 and the download restarts from zero).
- A checksum mismatch deletes the file and raises ``ChecksumError`` naming both hashes.
- Archives are checked before anything is written: absolute paths, ``..`` components, links
  and device files are refused (``UnsafeArchiveError``).
- A marker ``VOCdevkit/.<tar>.done`` is written after a verified extraction; a second run
  with the marker present does nothing, so the command works offline once done.

Usage: ``python -m tools.download_voc [--sets 2007-trainval,2007-test] [--out data]``
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import tarfile
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from utils.errors import FailedError, InputError

logger = logging.getLogger(__name__)

# The usual public mirror of the official tarballs (the Oxford host serves the same files under
# per-year paths, e.g. http://host.robots.ox.ac.uk/pascal/VOC/voc2012/).
DEFAULT_MIRROR = "https://pjreddie.com/media/files"
# set name -> tarball
VOC_TARS: dict[str, str] = {
    "2007-trainval": "VOCtrainval_06-Nov-2007.tar",
    "2007-test": "VOCtest_06-Nov-2007.tar",
    "2012-trainval": "VOCtrainval_11-May-2012.tar",
}
# tarball -> published MD5
VOC_MD5: dict[str, str] = {
    "VOCtrainval_06-Nov-2007.tar": "c52e279531787c972589f7e41ab4ae64",
    "VOCtest_06-Nov-2007.tar": "b6e924de25625d8de591ea690078ad9f",
    "VOCtrainval_11-May-2012.tar": "6cd6e144f989b92b3379bac3b3de84fd",
}
DEFAULT_SETS: tuple[str, ...] = tuple(VOC_TARS)
CHUNK_BYTES = 1 << 20  # read/write/hash block size
TIMEOUT_S = 60.0  # socket timeout per blocking read


class ChecksumError(FailedError):
    """A downloaded file does not have the expected checksum (it has been deleted)."""


class UnsafeArchiveError(InputError):
    """An archive member would be written outside the destination, or is a link or device."""


@dataclass(frozen=True)
class PrepareResult:
    """What ``prepare_voc`` did for one tarball."""

    name: str
    tar_path: Path
    action: str  # "skipped" (marker present) or "extracted"


def parse_voc_sets(text: str) -> list[str]:
    """``"2007-trainval,2007-test"`` -> ``["2007-trainval", "2007-test"]``.

    ``YEAR:SET`` (the form ``--sets`` of training uses) is accepted as well.

    Raises:
        ValueError: an unknown set (the message lists the known ones) or an empty list.
    """
    names = [t.strip().replace(":", "-") for t in text.split(",") if t.strip()]
    if not names:
        raise InputError(f"no sets in {text!r}; choose from {', '.join(VOC_TARS)}")
    unknown = [n for n in names if n not in VOC_TARS]
    if unknown:
        raise InputError(f"unknown set(s) {', '.join(unknown)}; choose from {', '.join(VOC_TARS)}")
    return list(dict.fromkeys(names))  # keep order, drop repeats


def md5sum(path: str | Path, progress: bool = False) -> str:
    """Hex MD5 of a file, read in blocks."""
    digest = hashlib.md5()
    path = Path(path)
    with (
        open(path, "rb") as f,
        tqdm(
            total=path.stat().st_size,
            unit="B",
            unit_scale=True,
            desc=f"md5 {path.name}",
            disable=not progress,
        ) as bar,
    ):
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _verify(path: Path, md5: str | None, progress: bool, name: str | None = None) -> None:
    """Raises ``ChecksumError`` (naming the file ``name``) and deletes ``path`` on a mismatch."""
    name = name or path.name
    if md5 is None:
        logger.warning("%s: no checksum given, not verified", name)
        return
    actual = md5sum(path, progress)
    if actual != md5.lower():
        path.unlink()
        raise ChecksumError(
            f"{name}: MD5 {actual} != expected {md5.lower()} (file deleted; run again "
            "to download it afresh, or try another --mirror)"
        )


def download(url: str, path: str | Path, md5: str | None = None, progress: bool = True) -> Path:
    """Downloads ``url`` to ``path`` through ``<path>.part``, resuming a partial download.

    Args:
        url: what to fetch (http, https or file).
        path: the final file. A ``<path>.part`` left by an interrupted run is continued with a
            ``Range: bytes=<size>-`` request: a 206 answer is appended, a 200 answer (the
            server ignores ranges) restarts from zero.
        md5: expected hex MD5, checked on the complete file before it gets its final name;
            ``None`` skips the check (with a warning).
        progress: show a tqdm bar.

    Returns:
        ``path``. An existing ``path`` is verified instead of downloaded again; if its
        checksum is wrong it is deleted and downloaded afresh.

    Raises:
        ChecksumError: the downloaded file has another MD5 (nothing is left behind).
        FailedError: the server could not be reached, answered with an error or broke off
            (the message names the URL).
        OSError: the server sent other bytes than asked for, or a write failed.
    """
    path = Path(path)
    if path.is_file():
        try:
            _verify(path, md5, progress)
            logger.info("%s: already downloaded", path)
            return path
        except ChecksumError as err:
            logger.warning("%s; downloading again", err)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "yolov4-tiny-voc-download"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as err:
        if err.code != 416 or not offset:  # 416: the .part already holds every byte
            raise FailedError(f"{url}: cannot download (HTTP {err.code} {err.reason})") from None
        logger.info("%s: server reports the partial file complete", part)
        part.replace(path)
        _verify(path, md5, progress)
        return path
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        # no network, an unknown host, a refused connection, a timeout
        raise FailedError(f"{url}: cannot download ({_reason(err)})") from None
    with response:
        total = _write_response(response, url, part, offset, progress)
    size = part.stat().st_size
    if total is not None and size != total:
        raise OSError(f"{url}: connection closed at {size} of {total} bytes (run again to resume)")
    _verify(part, md5, progress, name=path.name)
    part.replace(path)
    return path


def _write_response(response, url: str, part: Path, offset: int, progress: bool) -> int | None:
    """Appends a 206 answer to the ``offset`` bytes already in ``part`` (or writes a 200 answer
    from zero); returns the complete file's expected size when the server gave one."""
    name = part.name.removesuffix(".part")
    status = getattr(response, "status", 200)
    if offset and status == 206:
        content_range = response.headers.get("Content-Range", "")
        if not content_range.startswith(f"bytes {offset}-"):
            part.unlink()
            raise OSError(
                f"{url}: asked for bytes {offset}-, got {content_range!r}; "
                "partial file deleted, run again"
            )
        logger.info("%s: resuming at byte %d", name, offset)
        mode = "ab"
    else:
        if offset:
            logger.info("%s: server ignored the range request; starting over", name)
        offset, mode = 0, "wb"
    length = response.headers.get("Content-Length")
    total = offset + int(length) if length is not None else None
    with (
        open(part, mode) as f,
        tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, desc=name, disable=not progress
        ) as bar,
    ):
        for chunk in _chunks(response, url):
            f.write(chunk)
            bar.update(len(chunk))
    return total


def _chunks(response, url: str) -> Iterator[bytes]:
    """The blocks of ``response``; a connection that breaks off is a FailedError naming
    ``url`` (the ``.part`` file stays, so that the next run resumes)."""
    while True:
        try:
            chunk = response.read(CHUNK_BYTES)
        except (OSError, http.client.HTTPException) as err:
            raise FailedError(
                f"{url}: download broke off ({_reason(err)}); run again to resume"
            ) from None
        if not chunk:
            return
        yield chunk


def _reason(err: BaseException) -> str:
    """What went wrong, without the exception's wrapping (``<urlopen error ...>``)."""
    reason = getattr(err, "reason", None) or err
    return str(reason) or type(reason).__name__


def check_members(members: Iterable[tarfile.TarInfo], archive: str = "archive") -> None:
    """Refuses members that could write outside the destination folder.

    Raises:
        UnsafeArchiveError: an absolute path, a ``..`` component, a link or a device file.
    """
    for member in members:
        name = member.name
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if name.startswith(("/", "\\")) or (parts and ":" in parts[0]):
            raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path")
        if ".." in parts:
            raise UnsafeArchiveError(f"{archive}: member {name!r} leaves the destination (..)")
        if not (member.isfile() or member.isdir()):
            raise UnsafeArchiveError(
                f"{archive}: member {name!r} is a link or special file (VOC tarballs have none)"
            )


def extract_tar(tar_path: str | Path, dest: str | Path, progress: bool = True) -> None:
    """Extracts ``tar_path`` into ``dest`` after checking every member with ``check_members``.

    Nothing is written when a member is refused.
    """
    tar_path, dest = Path(tar_path), Path(dest)
    with tarfile.open(tar_path) as tar:
        members = tar.getmembers()
        check_members(members, tar_path.name)
        dest.mkdir(parents=True, exist_ok=True)
        # The "data" filter (Python >= 3.11.4) is a second line of defence behind check_members.
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        for member in tqdm(members, desc=f"extract {tar_path.name}", disable=not progress):
            tar.extract(member, dest, **kwargs)


def marker_path(dest: str | Path, tar_name: str) -> Path:
    """The file whose presence says ``tar_name`` was verified and extracted under ``dest``."""
    return Path(dest) / "VOCdevkit" / f".{tar_name}.done"


def prepare_voc(
    sets: Sequence[str] = DEFAULT_SETS,
    dest: str | Path = "data",
    *,
    cache_dir: str | Path | None = None,
    mirror: str = DEFAULT_MIRROR,
    checksums: Mapping[str, str] | None = None,
    delete_tars: bool = False,
    progress: bool = True,
) -> list[PrepareResult]:
    """Downloads, verifies and extracts the VOC tarballs of ``sets``.

    Args:
        sets: keys of ``VOC_TARS`` such as ``"2007-trainval"``.
        dest: extraction root; the result is ``<dest>/VOCdevkit/VOC<year>/...``.
        cache_dir: where tarballs are downloaded (default ``<dest>/VOCdevkit/downloads``,
            inside the folder git already ignores).
        mirror: URL base; a tarball's URL is ``<mirror>/<tar name>``.
        checksums: tar name -> MD5 (default ``VOC_MD5``). A tarball missing from it is an error.
        delete_tars: remove each tarball after its verified extraction.
        progress: show tqdm bars.

    Returns:
        One ``PrepareResult`` per set, in order.

    Raises:
        ValueError: an unknown set, or no checksum for a tarball.
        ChecksumError, FailedError, UnsafeArchiveError, OSError: see ``download`` and
            ``extract_tar``. Folders this call created and left empty are removed first.
    """
    checksums = VOC_MD5 if checksums is None else checksums
    dest = Path(dest)
    cache = Path(cache_dir) if cache_dir is not None else dest / "VOCdevkit" / "downloads"
    created = _missing_folders(cache) | _missing_folders(dest / "VOCdevkit")
    try:
        return _prepare(sets, dest, cache, mirror, checksums, delete_tars, progress)
    except BaseException:
        _remove_if_empty(created)  # a failed first run leaves no empty folders behind
        raise


def _missing_folders(path: Path) -> set[Path]:
    """``path`` and those of its parents that do not exist yet."""
    missing = set()
    while not path.exists() and path != path.parent:
        missing.add(path)
        path = path.parent
    return missing


def _remove_if_empty(folders: set[Path]) -> None:
    """Removes those of ``folders`` that exist and are empty, deepest first; never a file."""
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):  # rmdir refuses a folder that holds anything
            folder.rmdir()


def _prepare(
    sets: Sequence[str],
    dest: Path,
    cache: Path,
    mirror: str,
    checksums: Mapping[str, str],
    delete_tars: bool,
    progress: bool,
) -> list[PrepareResult]:
    """``prepare_voc`` once its folders are known."""
    results = []
    for set_name in sets:
        if set_name not in VOC_TARS:
            raise InputError(f"unknown set {set_name!r}; choose from {', '.join(VOC_TARS)}")
        tar_name = VOC_TARS[set_name]
        if tar_name not in checksums:
            raise InputError(f"no checksum for {tar_name}")
        tar_path = cache / tar_name
        marker = marker_path(dest, tar_name)
        if marker.is_file():
            logger.info("%s: already extracted into %s (marker %s)", tar_name, dest, marker)
            results.append(PrepareResult(set_name, tar_path, "skipped"))
            continue
        url = f"{mirror.rstrip('/')}/{tar_name}"
        logger.info("%s: fetching %s", set_name, url)
        download(url, tar_path, checksums[tar_name], progress)
        extract_tar(tar_path, dest, progress)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{checksums[tar_name]}  {tar_name}\n")
        if delete_tars:
            tar_path.unlink()
        results.append(PrepareResult(set_name, tar_path, "extracted"))
    return results
