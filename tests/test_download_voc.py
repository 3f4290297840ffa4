"""data.download against a local HTTP server that supports Range requests (no network)."""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import exit_code

from data.download import (
    VOC_TARS,
    ChecksumError,
    UnsafeArchiveError,
    download,
    marker_path,
    parse_voc_sets,
    prepare_voc,
)
from tools import download_voc

TAR_NAME = VOC_TARS["2007-test"]
FILES = {
    "VOCdevkit/VOC2007/Annotations/000001.xml": b"<annotation><filename>000001.jpg</filename>"
    + b" " * 3000
    + b"</annotation>\n",
    "VOCdevkit/VOC2007/JPEGImages/000001.jpg": bytes(range(256)) * 40,
    "VOCdevkit/VOC2007/ImageSets/Main/test.txt": b"000001\n",
}


def make_tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@dataclass
class Server:
    """A 127.0.0.1 server of ``files`` (name -> bytes) that records what it was asked."""

    files: dict[str, bytes]
    url: str = ""
    requests: list[str | None] = field(default_factory=list)  # Range header of each GET
    bytes_served: int = 0
    honour_range: bool = True
    wrong_range_start: bool = False  # answer 206 with the whole file


@pytest.fixture()
def server() -> Iterator[Server]:
    state = Server(files={})

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = state.files.get(self.path.lstrip("/"))
            state.requests.append(self.headers.get("Range"))
            if data is None:
                self.send_error(404)
                return
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
            if match and state.honour_range:
                start = 0 if state.wrong_range_start else int(match.group(1))
                if start >= len(data):
                    self.send_error(416)
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            # counted before sending: the client may finish reading before this thread runs on
            state.bytes_served += len(body)
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def serve_tar(server: Server, files: dict[str, bytes] = FILES) -> tuple[bytes, dict[str, str]]:
    data = make_tar(files)
    server.files[TAR_NAME] = data
    return data, {TAR_NAME: hashlib.md5(data).hexdigest()}


def prepare(server: Server, tmp_path: Path, checksums: dict[str, str]) -> list:
    return prepare_voc(
        ["2007-test"],
        dest=tmp_path / "data",
        cache_dir=tmp_path / "cache",
        mirror=server.url,
        checksums=checksums,
        progress=False,
    )


def test_download_verify_extract(server: Server, tmp_path: Path) -> None:
    data, checksums = serve_tar(server)
    results = prepare(server, tmp_path, checksums)
    assert [r.action for r in results] == ["extracted"]
    for name, content in FILES.items():
        assert (tmp_path / "data" / name).read_bytes() == content
    assert (tmp_path / "cache" / TAR_NAME).read_bytes() == data
    assert not (tmp_path / "cache" / f"{TAR_NAME}.part").exists()
    assert marker_path(tmp_path / "data", TAR_NAME).is_file()
    assert server.requests == [None] and server.bytes_served == len(data)


def test_resume_requests_only_the_rest(server: Server, tmp_path: Path) -> None:
    data, checksums = serve_tar(server)
    half = len(data) // 2
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / f"{TAR_NAME}.part").write_bytes(data[:half])
    prepare(server, tmp_path, checksums)
    assert server.requests == [f"bytes={half}-"]
    assert server.bytes_served == len(data) - half
    assert (tmp_path / "cache" / TAR_NAME).read_bytes() == data
    assert (tmp_path / "data" / "VOCdevkit/VOC2007/ImageSets/Main/test.txt").is_file()


def test_server_ignoring_range_restarts(server: Server, tmp_path: Path) -> None:
    data, _ = serve_tar(server)
    server.honour_range = False
    part = tmp_path / f"{TAR_NAME}.part"
    part.write_bytes(b"stale bytes that must not be kept")
    md5 = hashlib.md5(data).hexdigest()
    path = download(f"{server.url}/{TAR_NAME}", tmp_path / TAR_NAME, md5, progress=False)
    assert path.read_bytes() == data
    assert server.bytes_served == len(data)


def test_206_from_another_offset_is_not_appended(server: Server, tmp_path: Path) -> None:
    data, _ = serve_tar(server)
    server.wrong_range_start = True
    part = tmp_path / f"{TAR_NAME}.part"
    part.write_bytes(data[:100])
    url, md5 = f"{server.url}/{TAR_NAME}", hashlib.md5(data).hexdigest()
    with pytest.raises(OSError, match="bytes 100-"):
        download(url, tmp_path / TAR_NAME, md5, progress=False)
    assert not part.exists()
    assert download(url, tmp_path / TAR_NAME, md5, progress=False).read_bytes() == data


def test_complete_part_file_is_accepted(server: Server, tmp_path: Path) -> None:
    data, _ = serve_tar(server)
    (tmp_path / f"{TAR_NAME}.part").write_bytes(data)  # interrupted just before the rename
    path = download(
        f"{server.url}/{TAR_NAME}", tmp_path / TAR_NAME, hashlib.md5(data).hexdigest(), False
    )
    assert path.read_bytes() == data and server.bytes_served == 0


def test_wrong_checksum_errors_and_leaves_nothing(server: Server, tmp_path: Path) -> None:
    _, checksums = serve_tar(server)
    wrong = "0" * 32
    with pytest.raises(ChecksumError) as info:
        prepare(server, tmp_path, {TAR_NAME: wrong})
    message = str(info.value)
    assert wrong in message and checksums[TAR_NAME] in message and TAR_NAME in message
    assert not (tmp_path / "cache").exists()  # made by this run and left empty: removed
    assert not (tmp_path / "data" / "VOCdevkit" / "VOC2007").exists()
    assert not marker_path(tmp_path / "data", TAR_NAME).exists()


@pytest.mark.parametrize(
    "bad_name", ["../evil.txt", "/tmp/evil.txt", "VOCdevkit/VOC2007/../../../evil.txt"]
)
def test_unsafe_member_is_rejected(server: Server, tmp_path: Path, bad_name: str) -> None:
    _, checksums = serve_tar(server, {**FILES, bad_name: b"pwned"})
    with pytest.raises(UnsafeArchiveError, match="evil"):
        prepare(server, tmp_path, checksums)
    assert not (tmp_path / "evil.txt").exists()
    # every member is checked before anything is written
    assert not (tmp_path / "data" / "VOCdevkit" / "VOC2007").exists()
    assert not marker_path(tmp_path / "data", TAR_NAME).exists()


def test_symlink_member_is_rejected(server: Server, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        link = tarfile.TarInfo("VOCdevkit/link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc"
        tar.addfile(link)
    data = buffer.getvalue()
    server.files[TAR_NAME] = data
    with pytest.raises(UnsafeArchiveError, match="link"):
        prepare(server, tmp_path, {TAR_NAME: hashlib.md5(data).hexdigest()})


def test_second_run_is_a_no_op(server: Server, tmp_path: Path) -> None:
    _, checksums = serve_tar(server)
    prepare(server, tmp_path, checksums)
    served, requests = server.bytes_served, len(server.requests)
    image = tmp_path / "data" / "VOCdevkit/VOC2007/JPEGImages/000001.jpg"
    mtime = image.stat().st_mtime_ns
    results = prepare(server, tmp_path, checksums)
    assert [r.action for r in results] == ["skipped"]
    assert (server.bytes_served, len(server.requests)) == (served, requests)
    assert image.stat().st_mtime_ns == mtime


def test_cached_tar_is_not_downloaded_again(server: Server, tmp_path: Path) -> None:
    """Marker missing (extraction interrupted) but the tar is cached and valid: no download."""
    _, checksums = serve_tar(server)
    prepare(server, tmp_path, checksums)
    marker_path(tmp_path / "data", TAR_NAME).unlink()
    served = server.bytes_served
    assert [r.action for r in prepare(server, tmp_path, checksums)] == ["extracted"]
    assert server.bytes_served == served


def test_main_cli(server: Server, tmp_path: Path, monkeypatch, capsys) -> None:
    _, checksums = serve_tar(server)
    monkeypatch.setattr("data.download.VOC_MD5", checksums)
    argv = ["--sets", "2007:test", "--dest", str(tmp_path / "d"), "--mirror", server.url]
    assert download_voc.main([*argv, "--quiet"]) == 0
    assert "2007-test: extracted" in capsys.readouterr().out
    assert (tmp_path / "d" / "VOCdevkit/VOC2007/Annotations/000001.xml").is_file()
    assert download_voc.main([*argv, "--quiet"]) == 0
    assert "2007-test: skipped" in capsys.readouterr().out
    assert exit_code(download_voc.main, ["--sets", "2009-train"]) == 2  # bad input
    err = capsys.readouterr().err
    assert err.startswith("error: unknown set(s) 2009-train") and "2007-trainval" in err


def test_parse_voc_sets() -> None:
    assert parse_voc_sets("2007-trainval, 2012:trainval,2007-trainval") == [
        "2007-trainval",
        "2012-trainval",
    ]
    with pytest.raises(ValueError, match="2007-test"):
        parse_voc_sets("2007-val")
    with pytest.raises(ValueError):
        parse_voc_sets(" , ")
