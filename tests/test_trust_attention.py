"""Attention settings that cannot work are refused before any work, in one line: option values
outside a block's range, repeated options, a block placed nowhere, and plugin modules or
blocks that fail on import, cannot be built as ``cls(channels, **options)`` or return
something other than a tensor of their input's shape."""

from __future__ import annotations

import itertools
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import exit_code
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from voc_factory import make_split, tiny_train_config

import train as train_cli
from nets.attention import check_block_output, parse_attention_args
from nets.checkpoint import ModelInfo, load_model, save_checkpoint
from nets.registry import (
    build_attention,
    check_attention_args,
    load_attention_plugins,
    plugin_names,
    temporary_registrations,
)
from nets.yolo import YoloBody
from utils.errors import InputError
from utils.training.config import TrainConfig

_counter = itertools.count()


@pytest.fixture
def isolated_registry():
    """The attention registry as it is, restored after the test."""
    with temporary_registrations():
        yield


@pytest.fixture
def plugin(tmp_path, monkeypatch, isolated_registry):
    """``plugin(source)`` writes a plugin module into ``tmp_path`` (importable for this test
    only) and returns its module name."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written = []

    def write(source: str) -> str:
        module = f"trust_plugin_{next(_counter)}_{abs(hash(str(tmp_path)))}"
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
        written.append(module)
        return module

    yield write
    for module in written:
        sys.modules.pop(module, None)


# ------------------------------------------------------------------ option values


BAD_VALUES = [
    ("se", "reduction=0", "reduction=0"),
    ("se", "reduction=-1", "reduction=-1"),
    ("se", "reduction=2.5", "reduction=2.5"),
    ("se", "reduction=abc", "reduction=abc"),
    ("se", "reduction=true", "reduction=true"),  # a bool is not the integer 1
    ("se", "reduction=1000", "reduction=1000"),  # would leave no hidden unit at 128 channels
    ("ca", "reduction=0", "reduction=0"),
    ("eca", "gamma=0", "gamma=0"),
    ("bam", "dilation=0", "dilation=0"),
    ("cbam_plus", "spatial_width=0", "spatial_width=0"),
    ("cbam", "kernel_size=4", "kernel_size=4"),  # an even kernel changes the map's size
    ("simam", "e_lambda=0", "e_lambda=0"),
    ("simam", "e_lambda=nan", "e_lambda=nan"),
]


@pytest.mark.parametrize(("phi", "args", "shown"), BAD_VALUES)
def test_bad_option_value_is_refused_when_the_settings_are_read(phi, args, shown) -> None:
    with pytest.raises(ValueError) as err:
        TrainConfig(phi=phi, attention_args=args)
    message = str(err.value)
    assert "\n" not in message
    assert "--attention-args" in message and f"'{phi}'" in message and shown in message
    assert "must be" in message  # the valid range
    # the model refuses the same values with the same words, not a ZeroDivisionError
    with pytest.raises(ValueError, match=shown):
        YoloBody(2, phi, attention_args=args)


def test_the_message_gives_the_valid_range() -> None:
    with pytest.raises(ValueError) as err:
        TrainConfig(phi="se", attention_at="feat2,csp1", attention_args="reduction=200")
    assert "an integer >= 1 and at most 128" in str(err.value) and "csp1" in str(err.value)
    with pytest.raises(ValueError, match="an odd integer >= 1"):
        TrainConfig(phi="cbam", attention_args="kernel_size=4")
    # the same value suits points with more channels
    TrainConfig(phi="se", attention_at="feat2", attention_args="reduction=200")


def test_valid_values_still_build_and_a_float_option_takes_an_integer() -> None:
    TrainConfig(phi="cbam", attention_args="ratio=4,kernel_size=3")
    model = YoloBody(2, "simam", attention_at="feat2", attention_args="e_lambda=1")
    assert model.feat2_att.e_lambda.item() == 1.0
    assert check_attention_args("simam", {"e_lambda": 1}) == {"e_lambda": 1.0}


def test_repeated_option_is_an_error_naming_it() -> None:
    with pytest.raises(ValueError, match="'reduction' is given twice"):
        parse_attention_args("reduction=8,ratio=2, reduction=4")
    with pytest.raises(ValueError, match="'reduction' is given twice"):
        TrainConfig(phi="se", attention_args="reduction=8,reduction=4")


def test_train_cli_refuses_a_bad_value_before_the_run_folder(tmp_path, capsys) -> None:
    logs = tmp_path / "logs"
    argv = ["--phi", "cbam", "--attention-args", "kernel_size=4", "--log-dir", str(logs)]
    assert exit_code(train_cli.main, [*argv, "--voc-root", tmp_path / "nowhere"]) == 2
    err = capsys.readouterr().err
    assert "kernel_size=4" in err and "'cbam'" in err and "Traceback" not in err
    assert not logs.exists()


def test_model_summary_refuses_a_bad_value(capsys) -> None:
    from tools import model_summary

    argv = ["--phi", "se", "--attention-args", "reduction=0"]
    assert exit_code(model_summary.main, argv) == 2
    assert "reduction=0" in capsys.readouterr().err
    # with --phi all a bad value is an error too, not a reason to leave blocks out
    with pytest.raises(InputError, match="reduction=0"):
        model_summary.main(["--phi", "all", *argv[2:]])


def test_checkpoint_with_a_bad_stored_value_is_a_clear_error(tmp_path) -> None:
    """predict.py and eval.py build the model from the options a checkpoint stores."""
    model = YoloBody(2, "se", attention_at="feat2")
    info = ModelInfo(
        phi=1, phi_name="se", num_classes=2, class_names=["a", "b"], input_size=64,
        attention_at=("feat2",), attention_args={},
    )  # fmt: skip
    path = tmp_path / "m.pth"
    save_checkpoint(path, model, info)
    payload = torch.load(path, weights_only=True)
    payload["attention_args"] = {"reduction": 0}
    torch.save(payload, path)
    with pytest.raises(ValueError, match=r"'se'.*reduction=0"):
        load_model(path)


@pytest.mark.slow
def test_study_refuses_a_bad_value_before_any_run(tmp_path) -> None:
    from tools import study

    out = tmp_path / "study"
    argv = ["--data", "demo", "--voc-root", str(tmp_path / "voc"), "--phis", "se", "cbam"]
    argv += ["--seeds", "0", "--attention-args", "reduction=0", "--out", str(out)]
    with pytest.raises(InputError, match="reduction=0"):
        study.main(argv)
    assert not out.exists()


BLOCKS = ["se", "cbam", "eca", "ca", "bam", "cbam_plus", "simam", "nonlocal"]
KEYS = ["reduction", "ratio", "kernel_size", "gamma", "b", "dilation", "spatial_width", "e_lambda"]
LITERALS = ["0", "-1", "1", "2", "3", "8", "2.5", "1e-4", "abc", "true", "nan", "inf", ""]
ITEMS = st.builds(lambda k, v: f"{k}={v}", st.sampled_from([*KEYS, "x"]), st.sampled_from(LITERALS))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    phi=st.sampled_from(BLOCKS),
    text=st.one_of(
        st.lists(ITEMS, max_size=4).map(",".join),
        st.text(alphabet="=,.-+ 0123456789abceilnorstuxyz_TF", max_size=30),
    ),
)
def test_arbitrary_attention_args_are_read_or_refused_in_one_line(phi, text) -> None:
    try:
        cfg = TrainConfig(phi=phi, attention_args=text)
    except ValueError as err:
        assert "\n" not in str(err)
        return
    # what is accepted round-trips, and builds every block of the model
    assert parse_attention_args(cfg.attention_args) == parse_attention_args(text)
    options = parse_attention_args(cfg.attention_args)
    for channels in (128, 256, 384, 512):
        block = build_attention(phi, channels, **options)
        check_block_output(block, phi, "test", channels)


# ------------------------------------------------------------------ placement


def test_a_block_at_no_point_is_refused() -> None:
    with pytest.raises(ValueError, match=r"--attention-at '': attention block 'se'"):
        TrainConfig(phi="se", attention_at="")
    assert TrainConfig(phi="0", attention_at="").attention_at == ""


def test_model_summary_refuses_a_block_at_no_point(capsys) -> None:
    from tools import model_summary

    assert exit_code(model_summary.main, ["--phi", "se", "--attention-at", ""]) == 2
    assert "'se'" in capsys.readouterr().err


# ------------------------------------------------------------------ plugins


def test_plugin_raising_on_import_is_one_line_naming_module_and_error(plugin) -> None:
    failing = plugin(
        """
        from torch import nn
        from nets.attention import register_attention

        @register_attention("half_there")
        class HalfThere(nn.Module):
            def __init__(self, channels):
                super().__init__()

        raise RuntimeError("no GPU driver found")
        """
    )
    with pytest.raises(ValueError) as err:
        load_attention_plugins(failing)
    message = str(err.value)
    assert "\n" not in message and failing in message
    assert "RuntimeError: no GPU driver found" in message and f"{failing}.py:" in message
    assert "half_there" not in plugin_names()  # nothing of the failed module stays
    with pytest.raises(ValueError, match=f"--attention-plugin {failing}"):
        TrainConfig(phi="half_there", attention_plugin=failing)

    broken = plugin("def oops(:\n    pass\n")
    with pytest.raises(ValueError) as err:
        load_attention_plugins(broken)
    assert broken in str(err.value) and "SyntaxError" in str(err.value)


@pytest.mark.parametrize(
    "init", ["def __init__(self, *, gain=1.0):", "def __init__(self, gain=1.0):"]
)
def test_plugin_block_without_channels_is_refused_on_import(plugin, init) -> None:
    module = plugin(
        f"""
        from torch import nn
        from nets.attention import register_attention

        @register_attention("no_channels")
        class NoChannels(nn.Module):
            {init}
                super().__init__()

            def forward(self, x):
                return x
        """
    )
    with pytest.raises(ValueError) as err:
        load_attention_plugins(module)
    message = str(err.value)
    assert "\n" not in message and module in message and f"{module}.NoChannels" in message
    assert "(channels, **options)" in message and "gain=1.0" in message
    assert "no_channels" not in plugin_names()


SHAPES = """
import torch
from torch import nn
from nets.attention import register_attention


@register_attention("halve")
class Halve(nn.Module):
    def __init__(self, channels):
        super().__init__()

    def forward(self, x):
        return x[:, : x.shape[1] // 2]


@register_attention("as_tuple")
class AsTuple(nn.Module):
    def __init__(self, channels):
        super().__init__()

    def forward(self, x):
        return (x,)


@register_attention("blows_up")
class BlowsUp(nn.Module):
    def __init__(self, channels):
        super().__init__()

    def forward(self, x):
        return x / 0.0


@register_attention("counting")
class Counting(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls += 1
        return x
"""


def test_plugin_block_of_the_wrong_shape_fails_when_the_model_is_built(plugin) -> None:
    load_attention_plugins(plugin(SHAPES))
    with pytest.raises(ValueError) as err:
        YoloBody(2, "halve", attention_at="csp1")
    message = str(err.value)
    assert "'halve' at csp1" in message
    assert "(2, 128, 4, 4)" in message and "(2, 64, 4, 4)" in message
    with pytest.raises(ValueError, match="'as_tuple' at feat1: returns tuple"):
        YoloBody(2, "as_tuple", attention_at="feat1")
    with pytest.raises(ValueError, match="'blows_up' at feat2: returns non-finite"):
        YoloBody(2, "blows_up", attention_at="feat2")
    # the check leaves the block as it was
    model = YoloBody(2, "counting", attention_at="feat2")
    assert model.feat2_att.calls.item() == 0 and model.feat2_att.training


@pytest.mark.slow
def test_plugin_block_of_the_wrong_shape_leaves_no_run_folder(plugin, tmp_path) -> None:
    from utils.training.fit import fit

    module = plugin(SHAPES)
    voc_root, classes = make_split(tmp_path / "data", num_train=4, num_test=2)
    logs = tmp_path / "logs"
    cfg = tiny_train_config(
        voc_root, classes, phi="halve", attention_plugin=module, log_dir=str(logs)
    )
    with pytest.raises(ValueError, match="'halve' at feat1"):
        fit(cfg)
    assert not logs.exists() or not any(Path(logs).iterdir())


def test_plugin_options_follow_their_annotation_or_default(plugin) -> None:
    module = plugin(
        """
        from torch import nn
        from nets.attention import register_attention

        @register_attention("typed")
        class Typed(nn.Module):
            def __init__(self, channels, *, scale: float = 1, steps=2, mode=None):
                super().__init__()
                self.scale, self.steps, self.mode = scale, steps, mode

            def forward(self, x):
                return x * self.scale
        """
    )
    load_attention_plugins(module)
    model = YoloBody(2, "typed", attention_at="feat2", attention_args="scale=2,mode=8")
    assert model.feat2_att.scale == 2.0 and model.feat2_att.mode == 8  # no type: as read
    with pytest.raises(ValueError, match="'typed': option steps=true is invalid: must be an"):
        TrainConfig(phi="typed", attention_plugin=module, attention_args="steps=true")


def test_resume_imports_the_plugin_given_now(plugin, tmp_path) -> None:
    """A resumed run may name another plugin module (the old one moved): the checkpoint's
    config is read with the module given now."""
    from dataclasses import asdict

    from utils.training.setup import read_resume

    module = plugin(SHAPES)
    stored = {**asdict(TrainConfig()), "phi": "counting", "attention_plugin": "moved_away_module"}
    path = tmp_path / "last.pth"
    torch.save({"train_state": {}, "config": stored}, path)
    cfg = TrainConfig(resume=str(path), attention_plugin=module)
    merged, _ = read_resume(cfg, {"resume", "attention_plugin"})
    assert (merged.phi, merged.attention_plugin) == ("counting", module)
