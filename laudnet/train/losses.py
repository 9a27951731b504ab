"""LAUDNet's training objective: L = CE + α·KD + λ·(L_flops + L_bounds).

- L_flops = (F_dyn / F_static − t)², F over the whole network (stem and head included, maskers in F_dyn), with F_dyn
  the batch mean (the paper); or, with ``flops_reduction="sample"``, the mean over samples of (F_dyn,i / F_static − t)²,
  which asks every image to spend the target instead of the batch on average. With a target warm-up, t falls from 1
  over the first part of the run (`schedules.flops_target`) and the bounds pin each block to the current t.
- L_bounds = mean over blocks of max(0, f_l − upper)² + max(0, lower − f_l)², with the schedule of
  `schedules.flops_bounds` (relaxing to [0, 1] in the paper, or to narrower ``final_bounds``).
- KD = KL(softmax(z_t / T) ‖ softmax(z_s / T)) · T², from the frozen static network as teacher.
Defaults are the paper's ImageNet recipe: λ = 10, α = 0.5, T = 4.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from laudnet.train.schedules import FLOPS_REDUCTIONS, flops_bounds, flops_target


def flops_target_loss(ratio: Tensor, target: float) -> Tensor:
    """(ratio − t)², averaged over its elements (one batch-mean ratio, or one ratio per sample)."""
    return ((ratio - target) ** 2).mean()


def bounds_loss(block_ratios: Tensor, lower: float, upper: float) -> Tensor:
    """Mean over blocks of the squared violation of [lower, upper]."""
    if block_ratios.numel() == 0:
        return block_ratios.new_zeros(())
    return (F.relu(block_ratios - upper) ** 2 + F.relu(lower - block_ratios) ** 2).mean()


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """KL(teacher ‖ student) at temperature T, batch mean, scaled by T²."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits differ in shape: {tuple(student_logits.shape)} vs "
            f"{tuple(teacher_logits.shape)}"
        )
    log_p = F.log_softmax(student_logits / temperature, dim=-1)
    q = F.softmax(teacher_logits.detach() / temperature, dim=-1)
    return F.kl_div(log_p, q, reduction="batchmean") * temperature**2


class LaudLoss(nn.Module):
    """The composed objective; returns a dict with ``loss`` and every term.

    Args:
        target: target FLOPs ratio t in (0, 1].
        total_epochs: epochs of the run (for the bounds schedule).
        lambda_flops: λ, weight of the FLOPs terms.
        alpha_kd: α, weight of the distillation term.
        kd_temperature: T of the distillation term.
        bounds_fraction: fraction of the run over which the per-block bounds relax to ``final_bounds``.
        final_bounds: (lower, upper) per-block bounds after the relaxation; (0, 1) is the paper's.
        flops_reduction: ``batch`` (the paper: the batch-mean FLOPs ratio meets the target) or ``sample`` (every
            sample's ratio is pulled to the target).
        label_smoothing: of the cross-entropy.
        target_warmup: fraction of the run over which the target falls linearly from 1 to ``target`` (0: none).
    """

    def __init__(
        self,
        target: float,
        total_epochs: int,
        *,
        lambda_flops: float = 10.0,
        alpha_kd: float = 0.5,
        kd_temperature: float = 4.0,
        bounds_fraction: float = 0.33,
        final_bounds: tuple[float, float] = (0.0, 1.0),
        flops_reduction: str = "batch",
        label_smoothing: float = 0.0,
        target_warmup: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0 < target <= 1:
            raise ValueError(f"target FLOPs ratio must be in (0, 1], got {target}")
        self.target = target
        self.total_epochs = total_epochs
        self.lambda_flops = lambda_flops
        self.alpha_kd = alpha_kd
        self.kd_temperature = kd_temperature
        if flops_reduction not in FLOPS_REDUCTIONS:
            raise ValueError(f"unknown FLOPs reduction {flops_reduction!r}; choose from: {', '.join(FLOPS_REDUCTIONS)}")
        flops_bounds(0, 1, target, bounds_fraction, final_bounds)  # checks the final bounds against the target
        flops_target(0, 1, target, target_warmup)  # checks the warm-up fraction
        self.target_warmup = target_warmup
        self.bounds_fraction = bounds_fraction
        self.final_bounds = tuple(final_bounds)
        self.flops_reduction = flops_reduction
        self.label_smoothing = label_smoothing

    def target_at(self, epoch: float) -> float:
        """The FLOPs target at a (fractional) epoch."""
        return flops_target(epoch, self.total_epochs, self.target, self.target_warmup)

    def forward(
        self,
        logits: Tensor,
        labels: Tensor,
        model: nn.Module,
        *,
        epoch: float = 0,
        teacher_logits: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Loss terms of one batch; `model` must have just run the forward that produced `logits`.

        `epoch` may be fractional (epochs done, with the part of the current one), for the bounds schedule.
        """
        zero = logits.new_zeros(())
        out = {"loss_cls": F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)}
        if getattr(model, "paradigm", "static") != "static":
            per_sample, dense = model.dynamic_flops()
            ratio = per_sample.mean() / dense
            infos = [i for i in model.collect_info() if i.paradigm != "static"]
            block_ratios = torch.stack([i.mean_flops / i.dense_flops for i in infos])
            target = self.target_at(epoch)
            # Blocks are pinned to the current target, within the final bounds (which hold the final target).
            pin = min(max(target, self.final_bounds[0]), self.final_bounds[1])
            lower, upper = flops_bounds(epoch, self.total_epochs, pin, self.bounds_fraction, self.final_bounds)
            per_image = per_sample / dense if self.flops_reduction == "sample" else ratio
            out["loss_flops"] = flops_target_loss(per_image, target)
            out["loss_bounds"] = bounds_loss(block_ratios, lower, upper)
            out["flops_ratio"] = ratio.detach()
        else:
            out["loss_flops"] = out["loss_bounds"] = zero
            out["flops_ratio"] = torch.ones_like(zero)
        out["loss_distill"] = (
            distillation_loss(logits, teacher_logits, self.kd_temperature) if teacher_logits is not None else zero
        )
        out["loss"] = (
            out["loss_cls"]
            + self.alpha_kd * out["loss_distill"]
            + self.lambda_flops * (out["loss_flops"] + out["loss_bounds"])
        )
        return out
