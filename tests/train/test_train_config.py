import argparse

import pytest
import yaml

from laudnet.train.config import TrainConfig, add_train_arguments, load_yaml_overrides, resolve_config, save_resolved


def parse(*argv):
    parser = add_train_arguments(argparse.ArgumentParser(prog="laudnet train"))
    return resolve_config(parser.parse_args(list(argv)))


def test_defaults_follow_the_recipe():
    cfg = parse()
    assert cfg == TrainConfig()
    assert (cfg.target, cfg.lambda_flops, cfg.kd_alpha, cfg.kd_temperature) == (0.5, 10.0, 0.5, 4.0)
    assert (cfg.t0, cfg.t_last, cfg.temp_schedule) == (5.0, 0.1, "exp")
    assert (cfg.momentum, cfg.nesterov, cfg.weight_decay, cfg.warmup_epochs) == (0.9, True, 5e-5, 0.0)
    # 8 processes x 128 = 1024 images per step -> lr 0.08 (spec §9).
    assert cfg.effective_lr(world_size=8) == pytest.approx(0.08)
    assert parse("--lr", "0.3").effective_lr(8) == 0.3


def test_yaml_then_flags(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text("epochs: 3\nbatch-size: 16\ntarget: 0.4\ngranularity: 4-4-2-1\namp: false\nlr_base: 1\n")
    cfg = parse("-c", str(path), "--target", "0.6", "--amp")
    assert (cfg.epochs, cfg.batch_size, cfg.granularity, cfg.lr_base) == (3, 16, [4, 4, 2, 1], 1.0)
    assert cfg.target == 0.6 and cfg.amp is True  # flags win over the file
    assert isinstance(cfg.lr_base, float)


def test_short_flags_and_negation():
    cfg = parse("-m", "laud_resnet101", "-b", "8", "-t", "0.25", "--no-channels-last", "--granularity", "2,2,1,1")
    assert (cfg.model, cfg.batch_size, cfg.target, cfg.channels_last) == ("laud_resnet101", 8, 0.25, False)
    assert cfg.granularity == [2, 2, 1, 1]


def test_unknown_yaml_key(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("epochs: 3\ntraget: 0.5\n")
    with pytest.raises(ValueError, match=r"unknown config key 'traget' in .*typo\.yaml \(did you mean 'target'\?\)"):
        parse("-c", str(path))


def test_yaml_type_errors(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: three\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: epochs must be int, got 'three'"):
        load_yaml_overrides(path)
    path.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        load_yaml_overrides(path)
    path.write_text("amp: 1\n")
    with pytest.raises(ValueError, match="amp must be bool"):
        load_yaml_overrides(path)
    with pytest.raises(FileNotFoundError, match="config file .*missing.yaml does not exist"):
        load_yaml_overrides(tmp_path / "missing.yaml")


@pytest.mark.parametrize("target", ["0", "-0.1", "1.5"])
def test_bad_target_flag(target):
    with pytest.raises(ValueError, match=f"target must be in \\(0, 1\\], got {float(target)}"):
        parse("--target", target)


def test_bad_target_yaml(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("target: 2\n")
    with pytest.raises(ValueError, match="target must be in"):
        parse("-c", str(path))
    assert parse("--target", "1").target == 1.0  # the upper bound is allowed


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset", "cifar"], "unknown dataset 'cifar'"),
        (["--epochs", "0"], "epochs must be >= 1"),
        (["--warmup-epochs", "5", "--epochs", "5"], "warmup_epochs"),
        (["--label-smoothing", "1"], "label_smoothing"),
        (["--target-warmup", "1.5"], r"target_warmup must be in \[0, 1\], got 1.5"),
    ],
)
def test_invalid_values(argv, message):
    with pytest.raises(ValueError, match=message):
        parse(*argv)


def test_rejected_by_argparse(capsys):
    parser = add_train_arguments(argparse.ArgumentParser())
    with pytest.raises(SystemExit):
        parser.parse_args(["--paradigm", "pixel"])
    assert "invalid choice: 'pixel'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["--granularity", "4-0-2-1"])
    err = capsys.readouterr().err
    assert "granularity must be one positive integer or 4 of them" in err and "got '4-0-2-1'" in err
    with pytest.raises(SystemExit):
        parser.parse_args(["--epochs", "2.5"])


def test_bad_granularity_in_yaml(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("granularity: [4, x]\n")
    with pytest.raises(ValueError, match=r"g\.yaml: granularity must be one positive integer or 4 .*got \[4, 'x'\]"):
        load_yaml_overrides(path)


def test_save_resolved_round_trip(tmp_path):
    cfg = parse("--epochs", "2", "--granularity", "4-4-2-1", "--data-root", "/data")
    path = save_resolved(cfg, tmp_path / "run")
    assert path.name == "args.yaml" and yaml.safe_load(path.read_text())["granularity"] == [4, 4, 2, 1]
    assert parse("-c", str(path)) == cfg


def test_help_lists_groups(capsys):
    parser = add_train_arguments(argparse.ArgumentParser(prog="laudnet train"))
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    out = capsys.readouterr().out
    for text in ("-c FILE", "--masker-lr-mult", "--kd-alpha", "--max-steps-per-epoch", "dynamic:", "(default: 0.5)"):
        assert text in out


def test_shipped_imagenet_config():
    from pathlib import Path

    import laudnet.train.config

    path = Path(laudnet.train.config.__file__).parents[1] / "configs" / "imagenet-finetune.yaml"
    cfg = parse("-c", str(path), "--data-root", "/data/imagenet")
    assert cfg.dataset == "imagenet" and cfg.granularity == [4, 4, 2, 1]
    assert cfg.effective_lr(world_size=8) == pytest.approx(0.08)


def test_dataset_kwargs():
    cfg = parse("--train-subset", "100", "--canvas-clutter", "3", "--seed", "7", "--canvas-scale-max", "0.7")
    scale = (0.25, 0.7)
    assert cfg.dataset_kwargs("train") == {"num_samples": 100, "num_clutter": 3, "scale_range": scale, "seed": 7}
    assert cfg.dataset_kwargs("val") == {"num_clutter": 3, "scale_range": scale, "seed": 7}
    with pytest.raises(ValueError, match="canvas_scale_min <= canvas_scale_max"):
        parse("--canvas-scale-min", "0.8", "--canvas-scale-max", "0.7")
    assert parse("--dataset", "fashion-mnist", "--val-subset", "5").dataset_kwargs("val") == {"num_samples": 5}


def test_lambda_flops_defaults_by_task(tmp_path):
    # unset: 10 for classification (the ImageNet recipe), 1 for detection and instance (the official detection
    # configs); resolved at construction, so args.yaml and checkpoints hold the number (classification unchanged)
    assert parse().lambda_flops == 10.0
    assert parse("--task", "detection", "--dataset", "fashion-canvas-det").lambda_flops == 1.0
    assert parse("--task", "instance", "--dataset", "fashion-canvas-det").lambda_flops == 1.0
    assert parse("--task", "detection", "--dataset", "fashion-canvas-det", "--lambda-flops", "10").lambda_flops == 10.0
    assert parse("--lambda-flops", "2").lambda_flops == 2.0
    path = tmp_path / "det.yaml"
    path.write_text("task: detection\ndataset: fashion-canvas-det\nlambda_flops: 3\n")
    assert parse("-c", str(path)).lambda_flops == 3.0
    saved = save_resolved(parse(), tmp_path / "run")
    assert yaml.safe_load(saved.read_text())["lambda_flops"] == 10.0


def test_config_argv_leaves_out_the_task_default_lambda():
    from laudnet.train.config import config_argv

    for task, extra, default in (("classification", [], 10.0), ("detection", ["--dataset", "fashion-canvas-det"], 1.0)):
        cfg = parse("--task", task, *extra)
        assert cfg.lambda_flops == default
        assert "--lambda-flops" not in config_argv(cfg)  # the task's default, resolved: no flag needed
        assert parse(*config_argv(cfg)) == cfg
        changed = parse("--task", task, *extra, "--lambda-flops", "3")
        assert "--lambda-flops" in config_argv(changed) and parse(*config_argv(changed)) == changed
