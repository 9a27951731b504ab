"""The torch-free model table: names and aliases resolve, rows are checked, no torch import."""

import subprocess
import sys
from pathlib import Path

import pytest

from laudnet.model_table import MODEL_TABLE, ModelInfo, find_model_info, get_model_info

ROOT = Path(__file__).resolve().parents[1]


def test_rows_are_keyed_by_registered_name_and_resolve_their_aliases():
    for name, info in MODEL_TABLE.items():
        assert info.name == name
        for alias in (name, *info.aliases, name.upper()):
            assert get_model_info(alias) is info
    assert get_model_info("regnety004").arch == "regnety_400mf"
    assert get_model_info("deit_small_patch16_224").name == "laud_deit_small"


def test_families_and_img_size():
    vits = [n for n, i in MODEL_TABLE.items() if i.is_vit]
    assert vits == ["laud_deit_tiny", "laud_deit_small", "laud_vit_base"]
    assert all(MODEL_TABLE[n].takes_img_size for n in vits)
    assert not any(i.takes_img_size for i in MODEL_TABLE.values() if not i.is_vit)
    assert {i.family for i in MODEL_TABLE.values()} == {"resnet", "regnet", "vit"}
    assert MODEL_TABLE["laud_resnet101"].depth == 33 and MODEL_TABLE["laud_vit_base"].depth == 12


def test_unknown_name():
    assert find_model_info("resnet18") is None and find_model_info(None) is None
    with pytest.raises(ValueError, match="unknown model 'resnet18'; known: laud_resnet50"):
        get_model_info("resnet18")


def test_rows_are_checked():
    with pytest.raises(ValueError, match="unknown family 'mlp'"):
        ModelInfo("m", "mlp", "m", "m", depths=(1,))
    with pytest.raises(ValueError, match="needs dim, heads, patch_size"):
        ModelInfo("m", "vit", "m", "m", depths=(12,), dim=192)
    with pytest.raises(ValueError, match="one depth, width and bottleneck width per stage"):
        ModelInfo("m", "resnet", "m", "m", depths=(3, 4), widths=(256,), bottleneck_widths=(64,))


def test_imports_without_torch():
    code = "import sys, laudnet.model_table; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
