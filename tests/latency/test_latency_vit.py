"""The latency predictor on the LAUD-ViTs: geometry table, paradigms, monotonicity, bad input, CLI and JSON."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from laudnet.cli import main
from laudnet.latency import get_vit_geometry, list_vit_models, predict_model
from laudnet.latency.blocks import transformer_block
from laudnet.latency.hardware import load_hardware
from laudnet.latency.ops import get_op_model

ROOT = Path(__file__).resolve().parents[2]
VITS = ("laud_deit_tiny", "laud_deit_small", "laud_vit_base")
VIT_PARADIGMS = ("static", "token", "head", "layer", "token+head", "head+layer", "token+layer", "token+head+layer")
DENSITIES = tuple(i / 20 for i in range(20, -1, -1))  # 1.0, 0.95, ..., 0.0


@pytest.mark.parametrize("name", VITS)
def test_vit_geometry_matches_the_model(name):
    pytest.importorskip("timm")
    import laudnet

    model = laudnet.create_model(name, paradigm="static")
    g = get_vit_geometry(name)
    assert g.depth == len(model.blocks)
    assert g.dim == model.embed_dim and g.patch == model.patch_size and (g.img_size,) * 2 == model.img_size
    assert g.tokens == model.num_tokens == 197
    blk = model.blocks[0]
    assert (g.heads, g.hidden) == (blk.num_heads, blk.hidden)
    assert all((b.num_heads, b.dim, b.hidden) == (g.heads, g.dim, g.hidden) for b in model.blocks)
    assert g.num_classes == model.head.out_features


def test_vit_table():
    assert list_vit_models() == ["deit_tiny", "deit_small", "vit_base"]
    assert [(get_vit_geometry(n).dim, get_vit_geometry(n).heads) for n in VITS] == [(192, 3), (384, 6), (768, 12)]


@pytest.mark.parametrize("name", VITS)
@pytest.mark.parametrize("paradigm", VIT_PARADIGMS)
def test_vit_predictions_monotone_in_density(name, paradigm):
    preds = [predict_model(name, paradigm, d, hardware="h100", batch=128) for d in DENSITIES]
    assert all(p.static_ms > 0 and p.dynamic_ms > 0 and len(p.blocks) == 12 for p in preds)
    assert len({p.static_ms for p in preds}) == 1
    dyn = [p.dynamic_ms for p in preds]
    assert all(a >= b for a, b in zip(dyn, dyn[1:], strict=False)), dyn
    if paradigm == "static":
        assert all(p.ratio == 1.0 for p in preds)
    else:
        # skipping most of the network pays for its maskers and gathers
        assert predict_model(name, paradigm, 0.1, hardware="h100", batch=128).ratio < 0.95
        assert dyn[0] > dyn[-1]


@pytest.mark.parametrize("name", VITS)
@pytest.mark.parametrize("paradigm", ("static", "token", "head+layer", "token+head+layer"))
def test_vit_predictions_monotone_in_batch(name, paradigm):
    per_image = [predict_model(name, paradigm, 0.5, hardware="h100", batch=b).dynamic_ms
                 for b in (1, 4, 16, 64, 128, 256)]
    # a bigger batch costs more in all but less per image (launches and weights amortised)
    assert all(a >= b for a, b in zip(per_image, per_image[1:], strict=False)), per_image
    batches = (1, 4, 16, 64, 128, 256)
    totals = [p * b for p, b in zip(per_image, batches, strict=True)]
    assert all(a < b for a, b in zip(totals, totals[1:], strict=False)), totals
    assert per_image[0] > 2 * per_image[-1]


def test_vit_parts_skip_what_they_name():
    """Token skipping beats head skipping at the same rate (it thins the MLP too); the combination beats both."""
    p = {par: predict_model("deit_small", par, 0.5, hardware="h100").dynamic_ms
         for par in ("token", "head", "layer", "token+head+layer")}
    assert p["token+head+layer"] < min(p["token"], p["head"], p["layer"])
    assert p["token"] < p["head"]


def test_vit_engine_composition_keeps_mlp_dense_under_head_skipping():
    op = get_op_model(load_hardware("h100"), 128)
    ada = transformer_block(op, 197, 384, 6, head_density=0.5)
    eng = transformer_block(op, 197, 384, 6, head_density=0.5, engine=True, maskers=frozenset({"head"}))
    static = transformer_block(op, 197, 384, 6, engine=True, maskers=frozenset())
    assert ada.latency < eng.latency < static.latency


def test_vit_per_block_densities_and_sizes():
    rates = [1.0 - i / 12 for i in range(12)]
    p = predict_model("vit_base", "layer", per_block_densities=rates, hardware="h100", batch=64)
    assert [b.density for b in p.blocks] == rates
    assert all(a.dynamic_ms >= b.dynamic_ms for a, b in zip(p.blocks, p.blocks[1:], strict=False))
    assert p.static_ms == pytest.approx(sum(b.static_ms for b in p.blocks) + p.other_ms)
    assert p.other_ms > 0
    tiny, small, base = (predict_model(n, "static", hardware="h100").static_ms for n in VITS)
    assert tiny < small < base


@pytest.mark.parametrize("kwargs,message", [
    ({"model_name": "deit_tiny", "paradigm": "spatial"}, "unknown ViT paradigm 'spatial'"),
    ({"model_name": "deit_tiny", "paradigm": "token+token"}, "unknown ViT paradigm"),
    ({"model_name": "deit_tiny", "paradigm": "token+"}, "unknown ViT paradigm"),
    ({"model_name": "deit_tiny", "paradigm": "token", "granularity": "2"}, "take no granularity"),
    ({"model_name": "deit_tiny", "paradigm": "token", "compat": "paper"}, "does not apply to the ViTs"),
    ({"model_name": "resnet50", "paradigm": "token"}, "are for the ViTs"),
    ({"model_name": "resnet50", "paradigm": "token+head+layer"}, "are for the ViTs"),
    ({"model_name": "deit_small", "paradigm": "layer", "density": 1.5}, r"\[0, 1\]"),
    ({"model_name": "deit_small", "paradigm": "layer", "density": [0.5] * 11}, "has 12 blocks"),
    ({"model_name": "deit_small", "paradigm": "layer", "batch": 0}, "positive integer"),
])
def test_vit_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        predict_model(hardware="h100", **kwargs)


def test_vit_cnn_only_tools_refuse_vits():
    with pytest.raises(ValueError, match="is a ViT"):
        from laudnet.latency import get_geometry

        get_geometry("laud_vit_base")


def test_vit_cli_text_and_json(tmp_path, capsys):
    assert main(["latency", "--model", "laud_deit_tiny", "--paradigm", "token+head+layer", "--density", "0.5",
                 "--hardware", "h100", "--batch", "128", "--blocks"]) == 0
    out = capsys.readouterr().out
    assert "deit_tiny  token+head+layer" in out and "embed, norm, fc" in out and "ratio" in out
    assert main(["latency", "--model", "vit_base", "--paradigm", "head+layer", "--hardware", "h100", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert {"static_ms", "dynamic_ms", "ratio", "blocks"} <= set(d)
    assert d["paradigm"] == "head+layer" and len(d["blocks"]) == 12 and d["granularity"] is None
    assert d["ratio"] == pytest.approx(d["dynamic_ms"] / d["static_ms"]) and d["ratio"] < 1
    assert all({"density", "static_ms", "dynamic_ms", "ratio"} <= set(b) for b in d["blocks"])
    path = tmp_path / "rates.json"
    path.write_text(json.dumps({"per_block_densities": [0.4] * 12}))
    assert main(["latency", "--model", "deit_small", "--paradigm", "token", "--densities", str(path), "--json"]) == 0
    assert [b["density"] for b in json.loads(capsys.readouterr().out)["blocks"]] == [0.4] * 12


@pytest.mark.parametrize("argv,message", [
    (["--model", "deit_small", "--paradigm", "token", "--granularity", "2-2-2-2"], "take no granularity"),
    (["--model", "deit_small", "--paradigm", "channel"], "unknown ViT paradigm 'channel'"),
    (["--model", "resnet50", "--paradigm", "token+head"], "are for the ViTs"),
    (["--model", "deit_small", "--paradigm", "layer", "--densities", "0.5,0.5"], "has 12 blocks"),
])
def test_vit_cli_bad_input(argv, message, capsys):
    assert main(["latency", *argv]) == 2
    assert pytest.importorskip("re").search(message, capsys.readouterr().err)


def test_vit_latency_is_torch_free():
    code = ("import sys; from laudnet.cli import main; "
            "main(['latency', '--model', 'laud_vit_base', '--paradigm', 'token+head+layer', '--hardware', 'h100']); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    assert "vit_base" in res.stdout
