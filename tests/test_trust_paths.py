"""The output-safety rule, the name sanitiser's fixed cases and the run-folder lock."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import process_running

from utils.paths import (
    OutputPathError,
    check_apart,
    require_component,
    safe_component,
    unique_components,
)
from utils.runlock import FolderLock, FolderLockedError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("person", "person"),
        ("traffic light", "traffic light"),
        ("../../x", "_.._x"),
        ("/tmp/x", "_tmp_x"),
        ("..", "_"),
        (".", "_"),
        ("", "_"),
        ("a\x00b", "a_b"),
        ("a\\b", "a_b"),
        ("C:evil", "C_evil"),
        (".hidden", "hidden"),
        ("NUL", "_NUL"),
        ("con.txt", "_con.txt"),
    ],
)
def test_safe_component_cases(name: str, expected: str) -> None:
    assert safe_component(name) == expected


def test_safe_component_cuts_long_names_on_a_character_boundary() -> None:
    out = safe_component("é" * 300)
    assert len(out.encode("utf-8")) <= 200 and set(out) == {"é"}


def test_unique_components_tell_colliding_names_apart() -> None:
    assert unique_components(["a/b", "a_b", "A_B", "x"]) == ["a_b", "a_b-2", "A_B-3", "x"]


@pytest.mark.parametrize("name", ["../escape", "/abs/run", "a/b", "..", "", ".hidden", "x\x00"])
def test_require_component_refuses_names_that_move_the_output(name: str) -> None:
    with pytest.raises(ValueError, match="--name"):
        require_component(name, "--name")


def test_require_component_keeps_plain_names() -> None:
    assert require_component("exp-2_cbam", "--name") == "exp-2_cbam"


def test_check_apart_refuses_outputs_on_inputs(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "bus.jpg").write_bytes(b"x")
    for out, what in [
        (photos, "is the input"),
        (photos / "annotated", "lies inside the input"),
        (tmp_path, "contains the input"),
    ]:
        with pytest.raises(OutputPathError, match=what):
            check_apart(out, [photos], flag="--save-dir")
    with pytest.raises(OutputPathError, match="is the input"):
        check_apart(photos / "bus.jpg", [photos / "bus.jpg"], flag="--json", folder=False)
    # a new file name beside the inputs cannot collide with one, so it is allowed
    check_apart(photos / "dets.json", [photos / "bus.jpg"], flag="--json", folder=False)
    check_apart(tmp_path / "out", [photos], flag="--save-dir")


def test_check_apart_sees_through_links(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (tmp_path / "link").symlink_to(photos)
    with pytest.raises(OutputPathError, match="is the input"):
        check_apart(tmp_path / "link", [photos], flag="--out")
    (photos / "a.xml").write_text("<a/>")
    os.link(photos / "a.xml", tmp_path / "hard.xml")
    with pytest.raises(OutputPathError, match="is the input"):
        check_apart(tmp_path / "hard.xml", [photos / "a.xml"], flag="--out", folder=False)


def test_folder_lock_refuses_a_second_writer_and_names_the_owner(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from utils.runlock import FolderLock; "
            f"lock = FolderLock({str(tmp_path)!r}).acquire(); "
            "print('held', flush=True); time.sleep(60)",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderLockedError, match=f"process {holder.pid}"):
            FolderLock(tmp_path, "run").acquire()
    finally:
        holder.kill()
        holder.wait()
    # the operating system dropped the lock with the process: no stale lock
    deadline = time.monotonic() + 10
    while True:
        try:
            FolderLock(tmp_path).acquire().release()
            break
        except FolderLockedError:
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_folder_lock_is_exclusive_within_one_process(tmp_path: Path) -> None:
    with (
        FolderLock(tmp_path, "run"),
        pytest.raises(FolderLockedError, match="run is being written"),
    ):
        FolderLock(tmp_path, "run").acquire()
    with FolderLock(tmp_path, "run"):
        pass


_LOADER_HOLDER = """
import os, sys, time
from pathlib import Path
import torch
from torch.utils.data import DataLoader, Dataset
from utils.runlock import FolderLock, end_with_parent

class Quick(Dataset):
    def __len__(self):
        return 1000
    def __getitem__(self, i):
        Path(sys.argv[1], f"worker{os.getpid()}.pid").touch()
        return torch.zeros(1)

FolderLock(sys.argv[1]).acquire()
for _ in DataLoader(Quick(), num_workers=2, worker_init_fn=end_with_parent):
    time.sleep(0.3)  # a slow training step: the workers wait, queues full, for the next index
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_killed_writer_leaves_no_loader_worker_holding_its_lock(tmp_path: Path) -> None:
    # a trainer holding its folder's lock, its loader workers inheriting the lock file
    trainer = subprocess.Popen([sys.executable, "-c", _LOADER_HOLDER, str(tmp_path)], cwd=ROOT)
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("worker*.pid"))) < 2:
        assert time.monotonic() < deadline and trainer.poll() is None, "no loader workers"
        time.sleep(0.05)
    workers = [int(p.stem.removeprefix("worker")) for p in tmp_path.glob("worker*.pid")]
    trainer.kill()
    trainer.wait()
    deadline = time.monotonic() + 1.5  # torch's own watchdog notices a dead parent in ~5 s
    while True:
        try:
            FolderLock(tmp_path).acquire().release()
            break
        except FolderLockedError:
            assert time.monotonic() < deadline, "the lock outlived its writer in a loader worker"
            time.sleep(0.05)
    while any(process_running(pid) for pid in workers):  # they may still be in the midst of exiting
        assert time.monotonic() < deadline, "a loader worker outlived its writer"
        time.sleep(0.05)
