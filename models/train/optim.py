"""Optimizer and learning-rate schedule from the spec's train section.

Parameter groups split on two axes: weight decay (off for biases and norm layers when decay_norm_and_bias is
false) and learning-rate scale (pretrained parameters — a backbone or init_from weights — can learn slower than
the new head, the course's fine-tuning recipe). Frozen parameters are left out altogether.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from models.spec.schema import Spec

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)


def _no_decay_names(net: nn.Module) -> set[str]:
    names = set()
    for module_name, module in net.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if isinstance(module, _NORMS) or param_name.endswith("bias") or param.dim() <= 1:
                names.add(full)
    return names


def make_optimizer(net: nn.Module, spec: Spec, lr_scales: dict[str, float]) -> torch.optim.Optimizer:
    """lr_scales: parameter name → learning-rate multiplier (absent = 1)."""
    train = spec.train
    no_decay = set() if train.decay_norm_and_bias else _no_decay_names(net)
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, param in net.named_parameters():
        if not param.requires_grad:
            continue
        decay = 0.0 if name in no_decay else train.weight_decay
        groups.setdefault((decay, lr_scales.get(name, 1.0)), []).append(param)
    kind, args = train.optimizer.kind, train.optimizer.args
    param_groups = [{"params": params, "weight_decay": decay, "lr": args.lr * scale, "lr_scale": scale}
                    for (decay, scale), params in groups.items()]
    if not param_groups:
        raise ValueError("every parameter is frozen: nothing to train")
    if kind == "sgd":
        return torch.optim.SGD(param_groups, lr=args.lr, momentum=args.momentum, nesterov=args.nesterov)
    cls = torch.optim.Adam if kind == "adam" else torch.optim.AdamW
    return cls(param_groups, lr=args.lr, betas=args.betas)


def make_schedule(optimizer: torch.optim.Optimizer, spec: Spec, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step multiplier: linear warm-up, then step decay or cosine annealing (or constant)."""
    train = spec.train
    total = max(train.epochs * steps_per_epoch, 1)
    warm = int(train.warmup_epochs * steps_per_epoch)
    schedule = train.schedule
    base_lr = train.optimizer.args.lr

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if schedule is None:
            return 1.0
        if schedule.kind == "step":
            return schedule.step.gamma ** ((step // steps_per_epoch) // schedule.step.every)
        floor = min(schedule.cosine.min_lr / base_lr, 1.0)
        progress = min((step - warm) / max(total - warm, 1), 1.0)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
