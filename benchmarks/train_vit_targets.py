"""Accuracy of trained LAUD-ViTs on fashion-canvas at several FLOPs targets (issue 6, item 5).

The recipe is ``laudnet/configs/vit-canvas.yaml`` (read with `laudnet.train.demo.load_recipe`, as ``laudnet demo``
reads its own): a static network trained from scratch, then dynamic networks fine-tuned from its ``best.pt`` with it as
the distillation teacher, one per ``PARADIGM@TARGET`` (default: token+head+layer at 0.3, 0.5 and 0.7, token at 0.5),
and one dynamic network trained from scratch (no teacher) with the static run's schedule, on a GPU that would otherwise
wait for the static run (last, on a single GPU). Every run is a subprocess ``python -m laudnet train <flags>`` (the
flags rebuild its whole config, see `laudnet.train.config.config_argv`), then ``python -m laudnet eval`` of its
``last.pt``; one training per GPU (``CUDA_VISIBLE_DEVICES``), the evaluations beside the next training.

Fitting the time budget: a probe (2 x 100 steps of the static and of the dynamic network, one per GPU at once, so the
CPUs are shared as in the real runs) measures images/s and start-up time; every training length of the config is
then scaled by one factor f (through ``train_subset``; epochs stay) so that the predicted schedule ends within
``--budget-s``. The JSON records f, the predicted and the measured durations. ``--budget-s 0`` runs the config as is.
At ``--deadline-s`` the trainings still running get SIGTERM (they save ``last.pt`` and stop; their results are marked
``interrupted``), so the command ends before a 10-minute limit with whatever was reached.

Writes under ``--out``: ``train_vit_targets.json`` (device, versions, commit, plan, and per run: target, paradigm,
top-1, FLOPs ratio, wall times, exact commands), ``train_vit_targets.md`` (table), ``train_vit_targets.png`` (top-1 vs
FLOPs ratio, static point marked) and ``train_vit_targets.log``; rewritten after each finished run, so an interrupted
benchmark still leaves its results. Checkpoints and logs of the runs go to ``--runs-dir`` (not ``--out``: a DeiT-S
checkpoint with AdamW state is ~260 MB).

GPU machine (2 GPUs, 32 cores; ~6 min):
    python benchmarks/train_vit_targets.py --data-root /data/fashion-mnist --out results --commit $(git rev-parse HEAD)
CPU check of the whole pipeline with tiny settings (~1 min):
    python benchmarks/train_vit_targets.py --smoke --data-root /usr/share/datasets/fashion-mnist --out /tmp/smoke
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: the laudnet next to this file
    sys.path.insert(0, str(ROOT))

from laudnet.train.config import TrainConfig, config_argv  # noqa: E402
from laudnet.train.demo import load_recipe  # noqa: E402
from laudnet.train.loop import check_config_inputs  # noqa: E402

DEFAULT_CONFIG = ROOT / "laudnet" / "configs" / "vit-canvas.yaml"
DEFAULT_RUNS = ("token+head+layer@0.3", "token+head+layer@0.5", "token+head+layer@0.7", "token@0.5")
DEFAULT_SCRATCH = "token+head+layer@0.5"
OUT_NAME = "train_vit_targets"
# The scale factor of the training lengths stays in this range: below it the runs are too short to mean anything.
SCALE_RANGE = (0.25, 3.0)
# A dynamic fine-tuning step also runs the teacher's forward (about a third of a training step's compute when the GPU
# is the bottleneck); the probe's dynamic network has no teacher, so its rate is divided by this.
TEACHER_SLOWDOWN = 1.2
# A probe run taking longer than this is stopped: something is wrong (a stuck data loader, say).
PROBE_TIMEOUT_S = 240.0
# Evaluations still running this many seconds after the training deadline are killed.
EVAL_GRACE_S = 30.0


# ------------------------------------------------------------------------------------------------------------- plan


def parse_run_spec(text: str) -> tuple[str, float]:
    """``PARADIGM@TARGET`` (e.g. ``token+head+layer@0.3``) → (paradigm, target).

    Raises:
        ValueError: not of that form, an unknown ViT paradigm, or a target outside (0, 1].
    """
    from laudnet.blocks.vit import parse_vit_paradigm

    paradigm, sep, target_text = text.partition("@")
    if not sep:
        raise ValueError(f"run {text!r} must be PARADIGM@TARGET, e.g. token+head+layer@0.5")
    try:
        target = float(target_text)
    except ValueError:
        raise ValueError(f"run {text!r}: target {target_text!r} is not a number") from None
    if not 0 < target <= 1:
        raise ValueError(f"run {text!r}: target must be in (0, 1], got {target}")
    canonical, parts = parse_vit_paradigm(paradigm)
    if not parts:
        raise ValueError(f"run {text!r}: a dynamic run needs token, head and/or layer, not 'static'")
    return canonical, target


@dataclass
class Job:
    """One training (and its evaluation) of the plan.

    Attributes:
        name: run folder name under the runs folder.
        kind: ``static``, ``dynamic`` (from the static network, its teacher) or ``scratch`` (dynamic, no init).
        cfg: the full training config (``train_subset`` at the config's length; see `scaled`).
        needs_static: starts only after the static run finished.
    """

    name: str
    kind: str
    cfg: TrainConfig
    needs_static: bool = False
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.output) / self.name

    def images(self) -> int:
        """Training images of the whole run."""
        return train_images(self.cfg)


def train_images(cfg: TrainConfig) -> int:
    """Training images of a run of ``cfg`` (full batches of ``train_subset``, every epoch)."""
    return cfg.epochs * (cfg.train_subset // cfg.batch_size) * cfg.batch_size


def scaled(cfg: TrainConfig, factor: float) -> TrainConfig:
    """``cfg`` with ``train_subset`` scaled by ``factor`` (whole batches, at least one); epochs are kept, so the
    per-epoch schedules (bounds, validation) keep their shape."""
    if cfg.train_subset is None:
        raise ValueError("the config must set train_subset for its training length to be scaled")
    batches = max(1, round(cfg.train_subset * factor / cfg.batch_size))
    return dataclasses.replace(cfg, train_subset=batches * cfg.batch_size)


def _dynamic_fields(dynamic: TrainConfig) -> dict[str, Any]:
    names = [f.name for f in dataclasses.fields(TrainConfig) if f.metadata["group"] == "dynamic"]
    return {n: getattr(dynamic, n) for n in names + ["masker_lr_mult"]}


def plan_jobs(static: TrainConfig, dynamic: TrainConfig, runs: list[str], scratch: str | None) -> list[Job]:
    """The static job, the dynamic jobs (one per ``PARADIGM@TARGET``) and the optional from-scratch job.

    The dynamic jobs take the ``dynamic:`` section with the run's paradigm and target, initialised from the static
    run's ``best.pt`` (which also makes it their teacher). The from-scratch job takes the ``static:`` section's
    length, lr and warm-up with the ``dynamic:`` section's masker and loss settings.
    """
    for section, cfg in (("static", static), ("dynamic", dynamic)):
        if cfg.train_subset is None:
            raise ValueError(f"the config's {section}: section must set train_subset (the training length is scaled "
                             "through it)")
    static = dataclasses.replace(static, run_name=None)
    jobs = [Job("static", "static", static)]
    init = str(Path(static.output) / "static" / "best.pt")
    for spec in runs:
        paradigm, target = parse_run_spec(spec)
        cfg = dataclasses.replace(dynamic, run_name=None, paradigm=paradigm, target=target, init=init)
        jobs.append(Job(f"dynamic-{paradigm.replace('+', '-')}-t{target:g}", "dynamic", cfg, needs_static=True))
    if scratch is not None:  # last in the list: it fills a slot that waits for the static run, or runs at the end
        paradigm, target = parse_run_spec(scratch)
        cfg = dataclasses.replace(static, mode="dynamic", **{**_dynamic_fields(dynamic), "paradigm": paradigm,
                                                             "target": target})
        jobs.append(Job(f"scratch-{paradigm.replace('+', '-')}-t{target:g}", "scratch", cfg))
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"the runs repeat a paradigm and target: {', '.join(names)}")
    return [dataclasses.replace(j, cfg=dataclasses.replace(j.cfg, run_name=j.name)) for j in jobs]


# ------------------------------------------------------------------------------------------------ timing and fit


@dataclass
class Rates:
    """What the probe measured: training images/s of the static and the dynamic network (no teacher), and the
    seconds a run spends outside its epochs (imports, data, CUDA start, checkpoints)."""

    static: float
    dynamic: float
    startup_s: float

    def of(self, job: Job) -> float:
        if job.kind == "static":
            return self.static
        teacher = job.cfg.init is not None and job.cfg.kd_alpha > 0
        return self.dynamic / (TEACHER_SLOWDOWN if teacher else 1.0)


def predict_train_s(job: Job, rates: Rates, factor: float, val_images: int) -> float:
    """Predicted wall time of a job's training at scale ``factor``: start-up, training images, one validation per
    epoch (rendering-bound like training, so at the same rate)."""
    rate = rates.of(job)
    return rates.startup_s + job.cfg.epochs * val_images / rate + train_images(scaled(job.cfg, factor)) / rate


def predict_schedule(durations: list[float], needs_static: list[bool], slots: int) -> list[tuple[int, float, float]]:
    """(slot, start, end) of each job as `run_plan` runs them: whenever a slot is free, it takes the first job in
    list order that is ready (jobs that need the static run, job 0, wait for its end)."""
    free = [0.0] * slots
    placed: dict[int, tuple[int, float, float]] = {}
    pending = list(range(len(durations)))
    while pending:
        slot = min(range(slots), key=lambda s: free[s])
        now = free[slot]
        static_end = placed[0][2] if 0 in placed else None
        ready = [k for k in pending if not needs_static[k] or (static_end is not None and static_end <= now)]
        if not ready:  # only jobs waiting for the static run, which is placed (it is job 0 and needs nothing)
            free[slot] = static_end
            continue
        k = ready[0]
        pending.remove(k)
        placed[k] = (slot, now, now + durations[k])
        free[slot] = now + durations[k]
    return [placed[k] for k in range(len(durations))]


def fit_scale(jobs: list[Job], rates: Rates, slots: int, budget_s: float, val_images: int,
              eval_s: float) -> tuple[float, float]:
    """(factor, predicted seconds): the largest factor in SCALE_RANGE whose predicted schedule, plus the last
    evaluation, takes at most ``budget_s``; the smallest factor when none does."""

    def total(f: float) -> float:
        durations = [predict_train_s(j, rates, f, val_images) for j in jobs]
        schedule = predict_schedule(durations, [j.needs_static for j in jobs], slots)
        return max(end for _, _, end in schedule) + eval_s

    lo, hi = SCALE_RANGE
    if total(lo) > budget_s:
        return lo, total(lo)
    if total(hi) <= budget_s:
        return hi, total(hi)
    for _ in range(40):  # bisection: total() grows with f
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if total(mid) <= budget_s else (lo, mid)
    return lo, total(lo)


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    """The rows of a run's ``metrics.csv`` as floats (empty when there is none)."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


# ---------------------------------------------------------------------------------------------------- processes


def _env(slot: str) -> dict[str, str]:
    env = dict(os.environ)
    # NCCL_* and the other variables of the machine are kept; each run sees one GPU (none for the CPU slots).
    env["CUDA_VISIBLE_DEVICES"] = "" if slot.startswith("cpu") else slot
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _command_text(slot: str, argv: list[str]) -> str:
    visible = "" if slot.startswith("cpu") else slot
    return f"CUDA_VISIBLE_DEVICES={visible} " + shlex.join(argv)


@dataclass
class Proc:
    job: Job
    what: str  # train or eval
    slot: str
    popen: subprocess.Popen
    argv: list[str]
    log: Path
    start: float
    terminated: bool = False
    done: bool = False  # its exit has been handled


class Runner:
    """Runs trainings one per slot and evaluations beside them; see the module docstring."""

    def __init__(self, slots: list[str], logs: Path, say, deadline: float | None, eval_argv_extra: list[str]) -> None:
        self.slots = slots
        self.logs = logs
        self.say = say
        self.deadline = deadline  # monotonic time; None: none
        self.eval_extra = eval_argv_extra
        self.procs: list[Proc] = []
        logs.mkdir(parents=True, exist_ok=True)

    def launch(self, job: Job, what: str, slot: str, argv: list[str]) -> Proc:
        log = self.logs / f"{job.name}.{what}.log"
        handle = log.open("w")
        popen = subprocess.Popen(argv, cwd=ROOT, env=_env(slot), stdout=handle, stderr=subprocess.STDOUT)
        handle.close()
        proc = Proc(job, what, slot, popen, argv, log, time.monotonic())
        self.procs.append(proc)
        job.result.setdefault("gpu" if not slot.startswith("cpu") else "slot", slot)
        job.result[f"{what}_command"] = _command_text(slot, argv)
        job.result[f"{what}_log"] = str(log)
        return proc

    def stop_all(self, sig: int = signal.SIGTERM) -> None:
        for p in self.procs:
            if p.popen.poll() is None:
                p.popen.send_signal(sig)
                p.terminated = True


def train_argv(job: Job) -> list[str]:
    return [sys.executable, "-m", "laudnet", "train", *config_argv(job.cfg)]


def eval_argv(job: Job, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "laudnet", "eval", str(job.run_dir / "last.pt"), "--json",
            str(job.run_dir / "eval.json"), *extra]


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_plan(jobs: list[Job], runner: Runner, on_change) -> None:
    """Run ``jobs`` (trainings in order on free slots, each followed by its evaluation) to the end."""
    pending = list(jobs)
    busy: dict[str, Proc] = {}
    static_state = "pending"
    while pending or any(not p.done for p in runner.procs):
        now = time.monotonic()
        if runner.deadline is not None and now >= runner.deadline:
            for p in busy.values():
                if p.popen.poll() is None and not p.terminated:
                    runner.say(f"deadline: SIGTERM to {p.job.name} (it saves last.pt and stops)")
                    p.popen.send_signal(signal.SIGTERM)
                    p.terminated = True
            for job in pending:
                job.result["status"] = "skipped: deadline reached before it could start"
            pending = []
            if now >= runner.deadline + EVAL_GRACE_S:
                for p in runner.procs:
                    if p.popen.poll() is None:
                        runner.say(f"deadline: killing {p.job.name} ({p.what})")
                        p.popen.kill()
        for p in list(runner.procs):
            rc = p.popen.poll()
            if rc is None or p.done:
                continue
            p.done = True
            wall = time.monotonic() - p.start
            job = p.job
            job.result[f"{p.what}_wall_s"] = round(wall, 1)
            job.result[f"{p.what}_returncode"] = rc
            if p.what == "train":
                busy.pop(p.slot, None)
                ok = rc == 0 or (p.terminated and (job.run_dir / "last.pt").is_file())
                job.result["interrupted"] = p.terminated
                if job.kind == "static":
                    static_state = "done" if rc == 0 else "failed"
                if ok:
                    runner.say(f"{job.name}: trained in {wall:.0f} s" + (" (interrupted)" if p.terminated else ""))
                    runner.launch(job, "eval", p.slot, eval_argv(job, runner.eval_extra))
                else:
                    job.result["status"] = f"training failed (exit {rc})"
                    job.result["error_tail"] = _tail(p.log)
                    runner.say(f"{job.name}: training FAILED (exit {rc}); last lines of {p.log}:\n{_tail(p.log)}")
            else:
                if rc == 0:
                    job.result["status"] = "interrupted" if job.result.get("interrupted") else "ok"
                    runner.say(f"{job.name}: evaluated in {wall:.0f} s")
                else:
                    job.result["status"] = f"evaluation failed (exit {rc})"
                    job.result["error_tail"] = _tail(p.log)
                    runner.say(f"{job.name}: evaluation FAILED (exit {rc}); last lines of {p.log}:\n{_tail(p.log)}")
            on_change()
        if static_state == "failed":
            for job in [j for j in pending if j.needs_static]:
                job.result["status"] = "skipped: the static run failed"
                pending.remove(job)
            on_change()
            static_state = "reported"
        for slot in runner.slots:
            if slot in busy:
                continue
            ready = [j for j in pending if not j.needs_static or static_state == "done"]
            if not ready:
                break
            job = ready[0]
            pending.remove(job)
            runner.say(f"{job.name}: training on {slot} ({job.cfg.epochs} epochs x {job.cfg.train_subset} images)")
            busy[slot] = runner.launch(job, "train", slot, train_argv(job))
        time.sleep(0.2)


# -------------------------------------------------------------------------------------------------------- probe


def probe(jobs: list[Job], runner: Runner, steps: int, val_images: int) -> Rates:
    """Measure training images/s of the static and the dynamic network (no teacher) and the start-up seconds.

    Two short runs (2 epochs of ``steps`` steps, one per slot at once, or one after the other on a single slot);
    the rate comes from the second epoch (the loader's workers are then running), the start-up is the wall time
    outside the epochs.
    """
    static = next(j for j in jobs if j.kind == "static")
    dyn_cfg = next((j for j in jobs if j.kind != "static"), static).cfg
    probes = [
        Job("probe-static", "static", dataclasses.replace(
            static.cfg, run_name="probe-static", overwrite=True, epochs=2, max_steps_per_epoch=steps,
            val_subset=val_images, warmup_epochs=0.0)),
        Job("probe-dynamic", "scratch", dataclasses.replace(
            dyn_cfg, run_name="probe-dynamic", overwrite=True, epochs=2, max_steps_per_epoch=steps,
            val_subset=val_images, init=None, warmup_epochs=0.0, mode="dynamic")),
    ]
    for p in probes:
        if p.cfg.train_subset is not None and p.cfg.train_subset < steps * p.cfg.batch_size:
            p.cfg = dataclasses.replace(p.cfg, train_subset=steps * p.cfg.batch_size)
    groups = [probes] if len(runner.slots) > 1 else [[p] for p in probes]
    for group in groups:
        procs = [runner.launch(p, "train", runner.slots[k], train_argv(p)) for k, p in enumerate(group)]
        for proc in procs:
            try:
                rc = proc.popen.wait(timeout=max(1.0, proc.start + PROBE_TIMEOUT_S - time.monotonic()))
            except subprocess.TimeoutExpired:
                runner.stop_all(signal.SIGKILL)
                raise RuntimeError(f"the probe run {proc.job.name} took over {PROBE_TIMEOUT_S:.0f} s; last lines of "
                                   f"{proc.log}:\n{_tail(proc.log)}") from None
            proc.done = True
            proc.job.result["train_wall_s"] = time.monotonic() - proc.start
            if rc != 0:
                raise RuntimeError(f"the probe run {proc.job.name} failed (exit {rc}); last lines of {proc.log}:\n"
                                   f"{_tail(proc.log)}")
    rates, startups = [], []
    for p in probes:
        rows = read_metrics(p.run_dir)
        if len(rows) < 2:
            raise RuntimeError(f"the probe run {p.name} wrote {len(rows)} epochs of metrics, expected 2")
        images = steps * p.cfg.batch_size
        rates.append(images / max(rows[1]["epoch_time_s"], 1e-6))
        startups.append(p.result["train_wall_s"] - sum(r["epoch_time_s"] for r in rows))
    return Rates(static=rates[0], dynamic=rates[1], startup_s=max(startups))


# ------------------------------------------------------------------------------------------------------ outputs


def _row_label(r: dict[str, Any]) -> str:
    if r["kind"] == "static":
        return "static"
    return f"{r['paradigm']} t={r['target']:g}" + (" (from scratch)" if r["kind"] == "scratch" else "")


def write_markdown(report: dict[str, Any], path: Path) -> None:
    meta = report["meta"]
    plan = report["plan"]
    lines = [
        f"# {meta['model']} on fashion-canvas ({meta['image_size']} px): top-1 at FLOPs targets",
        "",
        f"{meta['device']}; torch {meta['torch']}, timm {meta['timm']}; commit {meta['commit']}; config "
        f"`{meta['config']}`; training lengths x {plan['scale']:.3g} of the config's; total {report['wall_s']:.0f} s.",
        "",
        "| run | init | top-1 (%) | top-5 (%) | FLOPs ratio | MMACs / image | epochs x images | train s | status |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        init = {"static": "random", "dynamic": "static (teacher)", "scratch": "random (no teacher)"}[r["kind"]]
        ev = r.get("eval") or {}
        cells = [
            _row_label(r), init,
            f"{ev['top1']:.2f}" if ev else "—",
            f"{ev['top5']:.2f}" if ev else "—",
            f"{ev['flops_ratio']:.3f}" if ev else "—",
            f"{ev['dynamic_flops'] / 1e6:.0f}" if ev else "—",
            f"{r['epochs']} x {r['train_subset']:,}",
            f"{r['train_wall_s']:.0f}" if "train_wall_s" in r else "—",
            r.get("status", "not run"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Commands (in the order run):", "", "```"]
    for r in report["runs"]:
        for what in ("train_command", "eval_command"):
            if what in r:
                lines.append(r[what])
    lines += ["```", ""]
    path.write_text("\n".join(lines))


def plot(report: dict[str, Any], path: Path) -> bool:
    """Top-1 against FLOPs ratio: one line per paradigm over its targets, the static network as a star and a dotted
    line. Returns False when no run has an evaluation yet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in report["runs"] if r.get("eval")]
    if not done:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    series: dict[str, list[dict[str, Any]]] = {}
    for r in done:
        if r["kind"] == "static":
            ev = r["eval"]
            ax.axhline(ev["top1"], color="grey", ls=":", lw=1)
            ax.plot([ev["flops_ratio"]], [ev["top1"]], marker="*", ms=16, color="black", ls="none",
                    label=f"static ({ev['top1']:.1f} %)")
        else:
            key = r["paradigm"] + (" (from scratch)" if r["kind"] == "scratch" else "")
            series.setdefault(key, []).append(r)
    markers = iter("osD^vP<>X")
    for key, rs in series.items():
        rs.sort(key=lambda r: r["eval"]["flops_ratio"])
        xs = [r["eval"]["flops_ratio"] for r in rs]
        ys = [r["eval"]["top1"] for r in rs]
        hollow = "scratch" in key
        ax.plot(xs, ys, marker=next(markers, "o"), ls="-" if len(rs) > 1 else "none", label=key,
                mfc="none" if hollow else None)
        for r, x, y in zip(rs, xs, ys, strict=True):
            ax.annotate(f"t={r['target']:g}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=8)
    meta = report["meta"]
    ax.set_xlabel("FLOPs ratio (dynamic / static, validation mean)")
    ax.set_ylabel("top-1 (%)")
    ax.set_xlim(0, 1.08)
    ax.grid(alpha=0.3)
    ax.set_title(f"{meta['model']}, fashion-canvas {meta['image_size']} px ({meta['device_short']})", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return True


def collect(job: Job) -> dict[str, Any]:
    """The JSON record of a job: its plan, what it reached, and how long it took."""
    cfg = job.cfg
    r: dict[str, Any] = {
        "name": job.name,
        "kind": job.kind,
        "paradigm": "static" if job.kind == "static" else cfg.paradigm,
        "target": None if job.kind == "static" else cfg.target,
        "init": cfg.init,
        "epochs": cfg.epochs,
        "train_subset": cfg.train_subset,
        "train_images": job.images(),
        **job.result,
    }
    eval_path = job.run_dir / "eval.json"
    if job.result.get("eval_returncode") == 0 and eval_path.is_file():
        ev = json.loads(eval_path.read_text())
        r["eval"] = {k: ev[k] for k in ("top1", "top5", "loss", "num_samples", "flops_ratio", "dense_flops",
                                        "dynamic_flops", "block_names", "block_rates")}
    rows = read_metrics(job.run_dir)
    if rows:
        last = rows[-1]
        epoch_s = sum(row.get("epoch_time_s", 0.0) for row in rows)
        per_epoch = (cfg.train_subset // cfg.batch_size) * cfg.batch_size
        r["last_epoch"] = {k: last[k] for k in ("epoch", "train_top1", "flops_ratio", "val_top1", "val_flops_ratio",
                                                "temperature", "lr") if k in last}
        r["images_per_s"] = round(len(rows) * per_epoch / epoch_s, 1) if epoch_s > 0 else None
    return r


# --------------------------------------------------------------------------------------------------------- main


def _smoke(cfg: TrainConfig, subset: int) -> TrainConfig:
    return dataclasses.replace(cfg, model="laud_deit_tiny", image_size=32, train_subset=subset, val_subset=16,
                               batch_size=8, epochs=1, workers=0, threads=1, device="cpu", warmup_epochs=0.0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-root", required=True, help="folder with the Fashion-MNIST IDX files")
    p.add_argument("--out", required=True, help="folder for the JSON, markdown, plot and log (created)")
    p.add_argument("--runs-dir", default="/tmp/laudnet-vit-targets",
                   help="folder for the runs (checkpoints, logs); a timestamped subfolder per call "
                        "(default: %(default)s)")
    p.add_argument("-c", "--config", default=str(DEFAULT_CONFIG), help="recipe with static:/dynamic: sections")
    p.add_argument("--commit", default=None, help="commit recorded in the results (default: git rev-parse, if any)")
    p.add_argument("--gpus", default=None, help="comma-separated GPU ids, one run per GPU (default: all visible)")
    p.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS), metavar="PARADIGM@TARGET",
                   help="dynamic runs from the static network (default: %(default)s)")
    p.add_argument("--scratch", default=DEFAULT_SCRATCH, metavar="PARADIGM@TARGET",
                   help="dynamic run trained from scratch beside the static one (default: %(default)s)")
    p.add_argument("--no-scratch", action="store_true", help="no from-scratch run")
    p.add_argument("--budget-s", type=float, default=None,
                   help="fit all training lengths to end within this many seconds (0: run the config as is; "
                        "default: 360, with --smoke 40)")
    p.add_argument("--deadline-s", type=float, default=540.0,
                   help="SIGTERM the trainings still running after this many seconds (0: never)")
    p.add_argument("--probe-steps", type=int, default=100,
                   help="steps per epoch of the probe runs (default: %(default)s; the second epoch is timed)")
    g = p.add_argument_group("overrides of the config (both sections unless named)")
    g.add_argument("--static-epochs", type=int, default=None)
    g.add_argument("--dynamic-epochs", type=int, default=None)
    g.add_argument("--static-train-subset", type=int, default=None, help="images per static epoch")
    g.add_argument("--dynamic-train-subset", type=int, default=None, help="images per dynamic epoch")
    g.add_argument("--val-subset", type=int, default=None, help="validation images (default: all 10000)")
    g.add_argument("--batch-size", type=int, default=None)
    g.add_argument("--workers", type=int, default=None,
                   help="loader processes per run (default: CPU cores per GPU - 2)")
    g.add_argument("--model", default=None, help="e.g. laud_deit_tiny")
    g.add_argument("--image-size", type=int, default=None)
    p.add_argument("--smoke", action="store_true",
                   help="tiny settings on the CPU (DeiT-Ti, 32 px, a few dozen images, 2 CPU slots): checks the "
                        "whole pipeline in about a minute")
    return p


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _check_data(root: str) -> None:
    from laudnet.data.fashion import load_fashion_arrays

    path = Path(root)
    if not path.is_dir():
        raise FileNotFoundError(f"--data-root {root} is not a folder (it must hold the Fashion-MNIST IDX files)")
    for split in ("train", "val"):
        load_fashion_arrays(path, split)  # FileNotFoundError / ValueError name the missing or corrupt file


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _main(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"train_vit_targets: error: {err}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    import torch

    t_start = time.monotonic()
    _check_data(args.data_root)
    if args.budget_s is None:
        args.budget_s = 40.0 if args.smoke else 360.0
    if args.probe_steps < 1:
        raise ValueError(f"--probe-steps must be positive, got {args.probe_steps}")
    if args.smoke:
        slots = ["cpu0", "cpu1"]
        args.probe_steps = min(args.probe_steps, 2)
    elif args.gpus is not None:
        slots = [s.strip() for s in args.gpus.split(",") if s.strip()]
    else:
        slots = [str(k) for k in range(torch.cuda.device_count())]
    if not slots:
        raise RuntimeError("no CUDA device is visible: pass --gpus, or --smoke for the CPU check")
    if not args.smoke and not torch.cuda.is_available():
        raise RuntimeError("CUDA is not available here: use --smoke for the CPU check")

    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs_root = Path(args.runs_dir) / stamp
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_file = (out / f"{OUT_NAME}.log").open("w")

    def say(msg: str) -> None:
        line = f"[{time.monotonic() - t_start:6.1f}s] {msg}"
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    static_cfg, dynamic_cfg = load_recipe(args.config, output=str(runs_root))
    if static_cfg is None:
        raise ValueError(f"{args.config} has no static: section; this benchmark trains the static network first")
    cores = os.cpu_count() or 1
    common: dict[str, Any] = {"data_root": str(Path(args.data_root).resolve())}
    for name in ("val_subset", "batch_size", "model", "image_size"):
        if getattr(args, name) is not None:
            common[name] = getattr(args, name)
    if args.workers is not None:
        common["workers"] = args.workers
    elif not args.smoke:
        common["workers"] = max(1, cores // len(slots) - 2)  # the cores of a GPU, less the trainer's and pinning's
    if args.smoke:  # the smoke settings first, so that flags given with --smoke still apply
        static_cfg, dynamic_cfg = _smoke(static_cfg, 64), _smoke(dynamic_cfg, 32)
    static_cfg = dataclasses.replace(static_cfg, **common)
    dynamic_cfg = dataclasses.replace(dynamic_cfg, **common)
    for cfg_name, epochs, subset in (("static", args.static_epochs, args.static_train_subset),
                                     ("dynamic", args.dynamic_epochs, args.dynamic_train_subset)):
        over = {k: v for k, v in (("epochs", epochs), ("train_subset", subset)) if v is not None}
        if over:
            if cfg_name == "static":
                static_cfg = dataclasses.replace(static_cfg, **over)
            else:
                dynamic_cfg = dataclasses.replace(dynamic_cfg, **over)
    jobs = plan_jobs(static_cfg, dynamic_cfg, args.runs, None if args.no_scratch else args.scratch)
    check_config_inputs(static_cfg)  # an unknown model or a bad data root fails here, before any run
    val_images = static_cfg.val_subset or 10000

    import timm

    if args.smoke:
        device, device_short = f"CPU ({cores} cores), smoke settings", "CPU smoke"
    else:
        names = [torch.cuda.get_device_name(int(s)) for s in slots]
        device = f"{len(slots)} x {names[0]}" if len(set(names)) == 1 else ", ".join(names)
        device += f", {cores} CPU cores"
        device_short = f"{len(slots)} x {names[0]}"
    meta = {
        "benchmark": "train_vit_targets",
        "device": device,
        "device_short": device_short,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "commit": args.commit or _git_commit(),
        "config": os.path.relpath(args.config, ROOT) if Path(args.config).resolve().is_relative_to(ROOT)
        else args.config,
        "model": static_cfg.model,
        "image_size": static_cfg.image_size,
        "dataset": static_cfg.dataset,
        "val_images": val_images,
        "slots": slots,
        "workers_per_run": static_cfg.workers,
        "runs_dir": str(runs_root),
        "command": shlex.join([sys.executable, *sys.argv]),
        "smoke": args.smoke,
    }
    plan: dict[str, Any] = {"scale": 1.0, "budget_s": args.budget_s, "deadline_s": args.deadline_s}
    report: dict[str, Any] = {"meta": meta, "plan": plan, "runs": [], "wall_s": 0.0}

    def write() -> None:
        report["runs"] = [collect(j) for j in jobs]
        report["wall_s"] = round(time.monotonic() - t_start, 1)
        (out / f"{OUT_NAME}.json").write_text(json.dumps(report, indent=2) + "\n")
        write_markdown(report, out / f"{OUT_NAME}.md")
        plot(report, out / f"{OUT_NAME}.png")

    deadline = t_start + args.deadline_s if args.deadline_s > 0 else None
    eval_extra = ["--data-root", common["data_root"], "--workers", str(min(4, static_cfg.workers)),
                  "--batch-size", "512", "--device", "cpu" if args.smoke else "auto", "--threads",
                  str(static_cfg.threads or 1)]
    runner = Runner(slots, runs_root / "logs", say, deadline, eval_extra)
    say(f"{device}; torch {torch.__version__}, timm {timm.__version__}; runs in {runs_root}")

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        if args.budget_s > 0:
            say(f"probe: {args.probe_steps} x 2 steps of the static and the dynamic network")
            rates = probe(jobs, runner, args.probe_steps, val_images=min(val_images, 2 * static_cfg.batch_size))
            elapsed = time.monotonic() - t_start
            eval_s = rates.startup_s + val_images / rates.static
            factor, predicted = fit_scale(jobs, rates, len(slots), args.budget_s - elapsed, val_images, eval_s)
            plan.update(scale=round(factor, 4), probe_s=round(elapsed, 1),
                        rates={"static_images_per_s": round(rates.static, 1),
                               "dynamic_images_per_s_no_teacher": round(rates.dynamic, 1),
                               "startup_s": round(rates.startup_s, 1), "teacher_slowdown_assumed": TEACHER_SLOWDOWN},
                        predicted_total_s=round(elapsed + predicted, 1))
            for j in jobs:
                j.result["predicted_train_s"] = round(predict_train_s(j, rates, factor, val_images), 1)
                j.cfg = scaled(j.cfg, factor)
            say(f"probe: static {rates.static:.0f} images/s, dynamic {rates.dynamic:.0f} images/s (no teacher), "
                f"start-up {rates.startup_s:.0f} s -> training lengths x {factor:.3g}, predicted total "
                f"{elapsed + predicted:.0f} s")
        write()
        run_plan(jobs, runner, write)
    except KeyboardInterrupt:
        say("interrupted: stopping the runs")
        runner.stop_all()
        for p in runner.procs:
            try:
                p.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.popen.kill()
        write()
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    write()
    say(f"done in {report['wall_s']:.0f} s: {out / (OUT_NAME + '.json')}, .md, .png")
    for r in report["runs"]:
        ev = r.get("eval")
        score = f"top-1 {ev['top1']:.2f} %, FLOPs ratio {ev['flops_ratio']:.3f}" if ev else r.get("status", "not run")
        say(f"  {_row_label(r):<36} {score}")
    log_file.close()
    failed = [r for r in report["runs"] if r.get("status") not in ("ok", "interrupted")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
