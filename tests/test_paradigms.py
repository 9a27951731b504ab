"""`laudnet.paradigms`: the paradigm names, the granularity grammar and the defaults, and that the models, training and
the latency predictor all read the same ones."""

import argparse
import json
import subprocess
import sys

import pytest

from laudnet.paradigms import (
    CNN_PARADIGMS,
    DEFAULT_GRANULARITY,
    DYNAMIC_PARADIGMS,
    VIT_PARADIGMS,
    check_block_granularity,
    format_granularity,
    parse_granularity,
    parse_vit_paradigm,
    stage_granularity,
)

# ----------------------------------------------------------------------------------------------------- the grammar


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (4, (4, 4, 4, 4)),
        ("4", (4, 4, 4, 4)),
        ([2], (2, 2, 2, 2)),  # what an args.yaml written from `--granularity 2` by earlier versions holds
        ("4-4-2-1", (4, 4, 2, 1)),
        ("4,4,2,1", (4, 4, 2, 1)),
        (" 4, 4, 2, 1 ", (4, 4, 2, 1)),
        ([4, 4, 2, 1], (4, 4, 2, 1)),  # what a checkpoint holds
        ((8, 8, 8, 8), (8, 8, 8, 8)),
        (None, None),
    ],
)
def test_good_granularity(value, expected):
    assert parse_granularity(value) == expected


@pytest.mark.parametrize(
    "value",
    [-1, "-1", "-4", 0, "0", "4-0-2-1", "4-4-2", [4, 4, 2], "4-4-2-1-1", True, [True, 1, 1, 1], 4.0, [4.0] * 4, "x",
     "", "4--2-1", [4, "x"], ["4", "4", "2", "1"], {"s": 4}],
)
def test_bad_granularity_is_one_message_naming_the_value(value):
    with pytest.raises(ValueError) as err:
        parse_granularity(value)
    message = str(err.value)
    assert message.startswith("granularity must be one positive integer or 4 of them (one per stage)"), message
    assert message.endswith(f"got {value!r}"), message


def test_stage_count_is_a_parameter():
    assert parse_granularity("2-1", n_stages=2) == (2, 1)
    with pytest.raises(ValueError, match="or 2 of them"):
        parse_granularity("4-4-2-1", n_stages=2)


def test_stage_granularity_defaults_and_refusals():
    assert stage_granularity("spatial", None) == DEFAULT_GRANULARITY["spatial"] == (4, 4, 2, 1)
    assert stage_granularity("channel", None) == DEFAULT_GRANULARITY["channel"] == (8, 8, 8, 8)
    assert stage_granularity("channel", "2,2,1,1") == (2, 2, 1, 1)
    assert stage_granularity("layer", None) == stage_granularity("static", None) == (None,) * 4
    with pytest.raises(ValueError, match="paradigm 'layer' takes no granularity, got 2"):
        stage_granularity("layer", 2)
    with pytest.raises(ValueError, match="unknown paradigm 'token'.*static, spatial, channel, layer.*ViTs"):
        stage_granularity("token", None)


def test_block_granularity():
    assert check_block_granularity("spatial", 4) == 4 and check_block_granularity("layer", None) is None
    for bad in (0, -1, True, None, 2.0):
        with pytest.raises(ValueError, match=f"channel group size G must be a positive integer, got {bad!r}"):
            check_block_granularity("channel", bad)
    with pytest.raises(ValueError, match="takes no granularity"):
        check_block_granularity("static", 1)


def test_format_granularity():
    assert format_granularity((4, 4, 2, 1)) == "4-4-2-1" and format_granularity((None,) * 4) == "-"
    assert format_granularity(None) == "-"


# ------------------------------------------------------------------------------------------------------ the names


def test_paradigm_names():
    assert CNN_PARADIGMS == ("static", "spatial", "channel", "layer")
    assert VIT_PARADIGMS == ("static", "token", "head", "layer", "token+head", "token+layer", "head+layer",
                             "token+head+layer")
    assert "static" not in DYNAMIC_PARADIGMS and "both" not in DYNAMIC_PARADIGMS
    assert set(DYNAMIC_PARADIGMS) == set(CNN_PARADIGMS + VIT_PARADIGMS) - {"static"}


@pytest.mark.parametrize(("name", "canonical"), [("static", "static"), ("layer+token", "token+layer"),
                                                 ("head+token+layer", "token+head+layer"), ("head", "head")])
def test_vit_paradigm_canonical_order(name, canonical):
    got, parts = parse_vit_paradigm(name)
    assert got == canonical and parts == (frozenset() if name == "static" else frozenset(name.split("+")))
    assert got in VIT_PARADIGMS


@pytest.mark.parametrize("bad", ["token+token", "pixel", "", "spatial", "token+", 3, None])
def test_bad_vit_paradigm(bad):
    with pytest.raises(ValueError, match=repr(bad).replace("+", r"\+")):
        parse_vit_paradigm(bad)


def test_torch_free():
    code = "import sys, laudnet.paradigms; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------ one definition, read everywhere


def test_everyone_reads_the_same_names():
    import laudnet.blocks
    import laudnet.latency
    from laudnet.train import config

    assert laudnet.blocks.PARADIGMS is CNN_PARADIGMS and laudnet.latency.PARADIGMS is CNN_PARADIGMS
    assert config.PARADIGMS is DYNAMIC_PARADIGMS
    assert laudnet.latency.parse_granularity is parse_granularity
    from laudnet.blocks.vit import parse_vit_paradigm as blocks_parse  # benchmarks import it from there

    assert blocks_parse is parse_vit_paradigm


@pytest.mark.parametrize("paradigm", ["spatial", "channel"])
@pytest.mark.parametrize("model", ["resnet50", "regnety_400mf"])
def test_defaults_agree(model, paradigm, capsys):
    """The models, the training config, the latency predictor and its CLI take the same default granularity."""
    from laudnet.cli import main
    from laudnet.latency import predict_model
    from laudnet.models import create_model
    from laudnet.train.config import TrainConfig
    from laudnet.train.loop import build_model

    default = DEFAULT_GRANULARITY[paradigm]
    assert create_model(f"laud_{model}", paradigm=paradigm).granularity == default
    cfg = TrainConfig(model=f"laud_{model}", paradigm=paradigm, image_size=32)
    assert cfg.granularity is None and build_model(cfg, num_classes=10).granularity == default
    assert tuple(predict_model(model, paradigm, 0.5).granularity) == default
    assert main(["latency", "--model", model, "--paradigm", paradigm, "--json"]) == 0
    assert tuple(json.loads(capsys.readouterr().out)["granularity"]) == default


def test_one_grammar_for_config_model_and_predictor():
    """"4,4,2,1" (and every other form) means the same to the training config, create_model and the predictor."""
    from laudnet.latency import predict_model
    from laudnet.models import create_model
    from laudnet.train.config import TrainConfig, add_train_arguments, resolve_config
    from laudnet.train.loop import build_model

    for text in ("4,4,2,1", "4-4-2-1"):
        cfg = resolve_config(add_train_arguments(argparse.ArgumentParser()).parse_args(
            ["--granularity", text, "--paradigm", "spatial", "--image-size", "32"]))
        assert cfg.granularity == [4, 4, 2, 1]  # a list, as args.yaml and checkpoints hold it
        assert build_model(cfg, num_classes=10).granularity == (4, 4, 2, 1)
        assert create_model("laud_resnet50", paradigm="spatial", granularity=text).granularity == (4, 4, 2, 1)
        assert predict_model("resnet50", "spatial", 0.5, text).granularity == [4, 4, 2, 1]
    for bad in ("-1", "4-4-2", True):
        for build in (lambda g: create_model("laud_resnet50", paradigm="spatial", granularity=g),
                      lambda g: predict_model("resnet50", "spatial", 0.5, g),
                      lambda g: TrainConfig(granularity=g)):
            with pytest.raises(ValueError, match=f"granularity must be one positive integer.*got {bad!r}"):
                build(bad)


def test_help_texts_state_the_defaults(capsys):
    from laudnet.cli import main

    for command in ("latency", "train"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert "spatial 4-4-2-1" in out and "channel 8-8-8-8" in out, command
        assert "2-2-2-2" not in out and "1-1-1-1" not in out, command
