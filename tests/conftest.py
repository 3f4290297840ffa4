"""Shared fixtures. The project is not pip-installed: pytest puts the repository root on
``sys.path`` (``pythonpath`` in pyproject.toml), so ``import utils`` works from any folder."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from utils.precision import AMP_HINT_ENV

ROOT = Path(__file__).resolve().parents[1]

MODEL_DATA = ROOT / "model_data"


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory):
    """Caches the commands keep between runs go to a folder of this test session, for
    subprocesses too, never to the user's ~/.cache; and the --amp line's measurement (which
    runs the model 18 more times per command on a busy machine) is off except where tested."""
    settings = {"XDG_CACHE_HOME": str(tmp_path_factory.mktemp("cache")), AMP_HINT_ENV: "0"}
    before = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def require_asset(path: Path) -> Path:
    """Skips when a fetched asset is absent, unless YOLO_REQUIRE_ASSETS=1 (CI), then fails."""
    if path.is_file():
        return path
    message = f"{path} missing: run `make weights` (python -m tools.fetch_assets)"
    if os.environ.get("YOLO_REQUIRE_ASSETS") == "1":
        pytest.fail(message)
    pytest.skip(message)


def require_package(name: str):
    """The optional package ``name`` (``make test`` installs them): skipped when absent,
    unless YOLO_REQUIRE_ASSETS=1 (CI), then a failure, so a broken install is not a pass."""
    if os.environ.get("YOLO_REQUIRE_ASSETS") == "1":
        try:
            return importlib.import_module(name)
        except ImportError as err:
            pytest.fail(f"{name} missing ({err}): run `make launchers`")
    return pytest.importorskip(name)


@pytest.fixture(scope="session")
def official_weights() -> Path:
    return require_asset(MODEL_DATA / "yolov4-tiny.weights")


@pytest.fixture(scope="session")
def official_cfg() -> Path:
    return require_asset(MODEL_DATA / "yolov4-tiny.cfg")


@pytest.fixture(scope="session")
def sample_images() -> list[Path]:
    return [require_asset(MODEL_DATA / "samples" / n) for n in ("bus.jpg", "zidane.jpg")]


@pytest.fixture(scope="session")
def trained_tiny_checkpoint(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[int], tuple[Path, Path, str]]:
    """``trained_tiny_checkpoint(epochs)``: ``voc_factory.make_split`` data (6 train, 4 test
    images) and a checkpoint trained on it for ``epochs`` epochs at 64 px, as
    ``(voc_root, classes_file, path of last.pth)``. Each epoch count is trained once per
    session and shared, so tests must not write into what it returns."""
    from voc_factory import train_tiny_checkpoint

    trained: dict[int, tuple[Path, Path, str]] = {}

    def get(epochs: int) -> tuple[Path, Path, str]:
        if epochs not in trained:
            folder = tmp_path_factory.mktemp(f"tiny_checkpoint_{epochs}_epochs")
            trained[epochs] = train_tiny_checkpoint(folder, epochs)
        return trained[epochs]

    return get


def exit_code(main: Callable[[list[str]], int | None], argv: list) -> int:
    """The exit code of a command's ``main(argv)`` run as the command runs it
    (``utils.config.run_cli``): a user error becomes one ``error:`` line on stderr and its
    exit code, Ctrl-C 130."""
    from utils.config import run_cli

    with pytest.raises(SystemExit) as done:
        run_cli(lambda: main([str(a) for a in argv]))
    return done.value.code


def process_running(pid: int) -> bool:
    """Whether process ``pid`` runs (Linux ``/proc``): a zombie, dead but not yet reaped,
    counts as ended."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"
