"""Networks, differentiable augmentation and the distillation methods (DM, gradient matching).

Everything here is plain torch and device-agnostic. Randomness always comes from an explicit
CPU :class:`torch.Generator` (never the global RNG), so a seed gives identical tensors on CPU.

* :class:`ConvNet` — the ConvNet-D of the dataset-distillation literature: D blocks of
  conv3x3(width) → instance norm (GroupNorm with one group per channel, affine) → ReLU →
  avgpool 2, then a linear classifier. ``embed(x)`` is the flattened feature before it.
* :class:`DSA` — differentiable siamese augmentation (Zhao & Bilen 2021): colour, crop
  (translate), cutout, flip, scale, rotate with ``affine_grid``/``grid_sample``; the same
  parameters are applied to the real and the synthetic batch of one class and iteration.
* Methods register by name (``@register_method("dm")``); each takes the synthetic tensor and
  optimises it in place; :func:`omnifer.distill.distill` calls them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from omnifer.distill import ClassSampler, DistillConfig

__all__ = [
    "DSA",
    "METHODS",
    "ConvNet",
    "MethodResult",
    "dm_embedding_gap",
    "gradient_distance",
    "gm_matching_loss",
    "register_method",
    "reset_parameters",
]


# --------------------------------------------------------------------------- networks


class ConvNet(nn.Module):
    """ConvNet-``depth``: [conv3x3(width) → InstanceNorm → ReLU → AvgPool2]×depth → Linear."""

    def __init__(
        self,
        num_classes: int,
        channels: int = 3,
        width: int = 128,
        depth: int = 3,
        image_size: int = 32,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch, size = channels, image_size
        for _ in range(depth):
            layers += [
                nn.Conv2d(in_ch, width, kernel_size=3, padding=1),
                nn.GroupNorm(width, width, affine=True),  # instance norm, as in DC/DSA/DM
                nn.ReLU(inplace=True),
                nn.AvgPool2d(kernel_size=2, stride=2),
            ]
            in_ch, size = width, size // 2
        if size < 1:
            raise ValueError(f"image_size {image_size} is too small for depth {depth}")
        self.features = nn.Sequential(*layers)
        self.feature_dim = width * size * size
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        """Flattened features ``(N, feature_dim)``."""
        return self.features(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.embed(x))


@torch.no_grad()
def reset_parameters(net: nn.Module, generator: torch.Generator) -> nn.Module:
    """Re-initialise ``net`` like PyTorch's defaults, drawing from ``generator`` (CPU).

    Conv/Linear: kaiming-uniform(a=√5) weights and U(±1/√fan_in) biases; norm layers: 1 and 0.
    """
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            weight = module.weight
            fan_in = weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform with a=sqrt(5) gives this bound
            weight.copy_(torch.empty(weight.shape).uniform_(-bound, bound, generator=generator))
            if module.bias is not None:
                module.bias.copy_(
                    torch.empty(module.bias.shape).uniform_(-bound, bound, generator=generator)
                )
        elif isinstance(module, (nn.GroupNorm, nn.BatchNorm2d, nn.InstanceNorm2d)):
            if getattr(module, "weight", None) is not None:
                module.weight.fill_(1.0)
                module.bias.zero_()
    return net


# --------------------------------------------------------------------------- augmentation


@dataclass
class DSA:
    """Differentiable siamese augmentation.

    ``strategy`` is an underscore-joined list of ``color``, ``crop``, ``cutout``, ``flip``,
    ``scale``, ``rotate`` (the literature's ``color_crop_cutout_flip_scale_rotate``).
    ``mode="single"`` applies one randomly chosen transform per call (DSA's reference
    ``aug_mode='S'``); ``"all"`` applies every transform in order.

    Call ``params = dsa.sample(n, generator, siamese=True)`` then ``dsa.apply(x, params)`` on
    both batches: with ``siamese`` every image gets the same parameters, so batches of
    different sizes can share them. With ``siamese=False`` each of ``n`` images gets its own.
    """

    strategy: str = "color_crop_cutout_flip_scale_rotate"
    mode: str = "single"
    scale: float = 1.2
    rotate_deg: float = 15.0
    crop_ratio: float = 0.125
    cutout_ratio: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5
    ops: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        ops = tuple(p for p in self.strategy.split("_") if p and p.lower() != "none")
        unknown = sorted(set(ops) - set(_OPS))
        if unknown:
            raise ValueError(f"unknown DSA transforms {unknown}; known: {sorted(_OPS)}")
        if self.mode not in {"single", "all"}:
            raise ValueError(f"DSA mode must be 'single' or 'all', not {self.mode!r}")
        self.ops = ops

    def sample(self, n: int, generator: torch.Generator, siamese: bool = True) -> dict[str, Any]:
        """Random parameters for a batch of ``n`` (CPU tensors of length ``n`` or 1)."""
        if not self.ops:
            return {}
        if self.mode == "single":
            pick = int(torch.randint(len(self.ops), (1,), generator=generator))
            chosen: Sequence[str] = (self.ops[pick],)
        else:
            chosen = self.ops
        m = 1 if siamese else n

        def u(lo: float = 0.0, hi: float = 1.0) -> Tensor:
            return torch.rand(m, generator=generator) * (hi - lo) + lo

        params: dict[str, Any] = {}
        for op in chosen:
            if op == "color":
                params["color"] = (u(-0.5, 0.5) * self.brightness, u() * self.saturation,
                                   u() + self.contrast)
            elif op == "crop":
                params["crop"] = (u(-1, 1) * self.crop_ratio * 2, u(-1, 1) * self.crop_ratio * 2)
            elif op == "cutout":
                params["cutout"] = (u(), u())
            elif op == "flip":
                params["flip"] = u() < 0.5
            elif op == "scale":
                params["scale"] = (u(1 / self.scale, self.scale), u(1 / self.scale, self.scale))
            elif op == "rotate":
                params["rotate"] = u(-1, 1) * math.radians(self.rotate_deg)
        return params

    def apply(self, x: Tensor, params: dict[str, Any]) -> Tensor:
        """Apply sampled ``params`` to ``x`` (N,C,H,W); differentiable w.r.t. ``x``."""
        for op in self.ops:
            if op in params:
                x = _OPS[op](self, x, _to(params[op], x))
        return x

    def __call__(self, x: Tensor, generator: torch.Generator, siamese: bool = False) -> Tensor:
        return self.apply(x, self.sample(x.shape[0], generator, siamese=siamese))


def _to(p: Any, x: Tensor) -> Any:
    if isinstance(p, tuple):
        return tuple(_to(v, x) for v in p)
    value = p.to(x.device)
    return value.to(x.dtype) if value.is_floating_point() else value


def _col(v: Tensor, n: int) -> Tensor:
    return v.expand(n).view(n, 1, 1, 1)


def _affine(x: Tensor, theta: Tensor) -> Tensor:
    theta = theta.expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _color(_: DSA, x: Tensor, p: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    n = x.shape[0]
    bright, sat, con = p
    x = x + _col(bright, n)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * _col(sat, n) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * _col(con, n) + mean


def _crop(_: DSA, x: Tensor, p: tuple[Tensor, Tensor]) -> Tensor:
    tx, ty = p
    one, zero = torch.ones_like(tx), torch.zeros_like(tx)
    theta = torch.stack([torch.stack([one, zero, tx], -1), torch.stack([zero, one, ty], -1)], 1)
    return _affine(x, theta)


def _scale(_: DSA, x: Tensor, p: tuple[Tensor, Tensor]) -> Tensor:
    sx, sy = p
    zero = torch.zeros_like(sx)
    theta = torch.stack([torch.stack([sx, zero, zero], -1), torch.stack([zero, sy, zero], -1)], 1)
    return _affine(x, theta)


def _rotate(_: DSA, x: Tensor, angle: Tensor) -> Tensor:
    c, s, zero = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle)
    theta = torch.stack([torch.stack([c, -s, zero], -1), torch.stack([s, c, zero], -1)], 1)
    return _affine(x, theta)


def _flip(_: DSA, x: Tensor, flag: Tensor) -> Tensor:
    flag = flag.expand(x.shape[0]).view(-1, 1, 1, 1)
    return torch.where(flag, x.flip(3), x)


def _cutout(aug: DSA, x: Tensor, p: tuple[Tensor, Tensor]) -> Tensor:
    n, _, h, w = x.shape
    cy, cx = (v.expand(n) for v in p)
    half_h, half_w = aug.cutout_ratio * h / 2, aug.cutout_ratio * w / 2
    ys = torch.arange(h, device=x.device, dtype=x.dtype).view(1, h, 1) + 0.5
    xs = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, w) + 0.5
    inside = ((ys - (cy * h).view(n, 1, 1)).abs() < half_h) & (
        (xs - (cx * w).view(n, 1, 1)).abs() < half_w
    )
    return x * (~inside).unsqueeze(1).to(x.dtype)


_OPS: dict[str, Callable[..., Tensor]] = {
    "color": _color,
    "crop": _crop,
    "cutout": _cutout,
    "flip": _flip,
    "scale": _scale,
    "rotate": _rotate,
}


# --------------------------------------------------------------------------- registry


@dataclass
class MethodResult:
    """What a method reports besides the images it optimised in place."""

    losses: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


MethodFn = Callable[..., MethodResult]
METHODS: dict[str, MethodFn] = {}


def register_method(name: str) -> Callable[[MethodFn], MethodFn]:
    """Register a distillation method under ``name``.

    The function is called as ``fn(syn, sampler, num_classes, config, generator, device,
    steps)`` where ``syn`` is a leaf tensor ``(C*ipc, 3, H, W)`` with ``requires_grad`` that
    the method optimises in place, and ``steps`` an iterable to loop over (progress-wrapped).
    """

    def wrap(fn: MethodFn) -> MethodFn:
        METHODS[name] = fn
        return fn

    return wrap


def _make_net(num_classes: int, config: DistillConfig, device: torch.device) -> ConvNet:
    return ConvNet(num_classes, width=config.net_width, depth=config.net_depth,
                   image_size=config.image_size).to(device)


def _seed(generator: torch.Generator) -> int:
    return int(torch.randint(2**62, (1,), generator=generator))


# --------------------------------------------------------------------------- DM


def _dm_loss(
    net: ConvNet,
    syn: Tensor,
    real_by_class: list[Tensor],
    ipc: int,
    dsa: DSA | None,
    generator: torch.Generator,
) -> Tensor:
    """Σ_c ‖mean embed(aug(real_c)) − mean embed(aug(syn_c))‖² (one forward for all)."""
    reals, syns = [], []
    for c, real in enumerate(real_by_class):
        s = syn[c * ipc : (c + 1) * ipc]
        if dsa is not None:
            params = dsa.sample(1, generator, siamese=True)
            real, s = dsa.apply(real, params), dsa.apply(s, params)
        reals.append(real)
        syns.append(s)
    with torch.no_grad():
        emb_real = net.embed(torch.cat(reals))
    emb_syn = net.embed(torch.cat(syns))
    loss = syn.new_zeros(())
    start = 0
    for c, real in enumerate(reals):
        mean_real = emb_real[start : start + real.shape[0]].mean(0)
        start += real.shape[0]
        mean_syn = emb_syn[c * ipc : (c + 1) * ipc].mean(0)
        loss = loss + ((mean_real - mean_syn) ** 2).sum()
    return loss


def _make_dsa(config: DistillConfig) -> DSA | None:
    return DSA(config.dsa_strategy, mode=config.dsa_mode) if config.dsa_strategy else None


def _real_batches(sampler: ClassSampler, num_classes: int, config: DistillConfig,
                  generator: torch.Generator, device: torch.device) -> list[Tensor]:
    """One real batch per class, in class order (both methods draw them the same way)."""
    return [sampler.sample(c, config.batch_real, generator).to(device)
            for c in range(num_classes)]


def _mean_over_random_nets(
    loss_fn: Callable[..., Tensor], syn: Tensor, real_by_class: list[Tensor], ipc: int,
    num_nets: int, seed: int, width: int, depth: int,
) -> float:
    """A method's loss (no DSA) averaged over ``num_nets`` freshly initialised ConvNets."""
    gen = torch.Generator().manual_seed(seed)
    net = ConvNet(len(real_by_class), width=width, depth=depth, image_size=syn.shape[-1])
    net = net.to(syn.device)
    total = 0.0
    for _ in range(num_nets):
        reset_parameters(net, gen)
        total += float(loss_fn(net, syn.detach(), real_by_class, ipc, None, gen).detach())
    return total / num_nets


@register_method("dm")
def distribution_matching(
    syn: Tensor,
    sampler: ClassSampler,
    num_classes: int,
    config: DistillConfig,
    generator: torch.Generator,
    device: torch.device,
    steps: Any,
) -> MethodResult:
    """Distribution matching (Zhao & Bilen, WACV 2023).

    Each iteration: a freshly, randomly initialised ConvNet (frozen); per class a real batch
    and the class's synthetic images pass the same DSA transform; the loss is the squared
    distance of their mean embeddings, summed over classes; SGD (momentum 0.5) on pixels.
    """
    net = _make_net(num_classes, config, device)
    net.train()
    for p in net.parameters():
        p.requires_grad_(False)
    dsa = _make_dsa(config)
    opt = torch.optim.SGD([syn], lr=config.lr_img, momentum=0.5)
    result = MethodResult()
    for _ in steps:
        reset_parameters(net, generator)
        real = _real_batches(sampler, num_classes, config, generator, device)
        loss = _dm_loss(net, syn, real, config.ipc, dsa, generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        result.losses.append(float(loss.detach()) / num_classes)
    return result


def dm_embedding_gap(
    syn: Tensor,
    real_by_class: list[Tensor],
    ipc: int,
    num_nets: int = 5,
    seed: int = 0,
    width: int = 128,
    depth: int = 3,
) -> float:
    """Mean over ``num_nets`` random ConvNets of Σ_c ‖mean embed(real_c) − mean embed(syn_c)‖².

    No augmentation; a diagnostic that DM should drive down.
    """
    with torch.no_grad():
        return _mean_over_random_nets(_dm_loss, syn, real_by_class, ipc, num_nets, seed, width,
                                      depth)


# --------------------------------------------------------------------------- gradient matching


def gradient_distance(g_syn: Sequence[Tensor], g_real: Sequence[Tensor]) -> Tensor:
    """Layer-wise distance of DC ("ours"): Σ_layers Σ_out (1 − cos(g_syn[o], g_real[o])).

    Biases and norm parameters (1-D tensors) are skipped, as in the reference code.
    """
    dist = g_syn[0].new_zeros(())
    for gs, gr in zip(g_syn, g_real, strict=True):
        if gs.dim() == 1:
            continue
        gs, gr = gs.flatten(1), gr.flatten(1)
        cos = (gs * gr).sum(1) / (gs.norm(dim=1) * gr.norm(dim=1) + 1e-6)
        dist = dist + (1 - cos).sum()
    return dist


def _gm_loss(
    net: ConvNet,
    syn: Tensor,
    real_by_class: list[Tensor],
    ipc: int,
    dsa: DSA | None,
    generator: torch.Generator,
) -> Tensor:
    params = [p for p in net.parameters() if p.requires_grad]
    loss = syn.new_zeros(())
    for c, real in enumerate(real_by_class):
        s = syn[c * ipc : (c + 1) * ipc]
        if dsa is not None:
            aug = dsa.sample(1, generator, siamese=True)
            real, s = dsa.apply(real, aug), dsa.apply(s, aug)
        y_real = torch.full((real.shape[0],), c, dtype=torch.long, device=real.device)
        g_real = torch.autograd.grad(F.cross_entropy(net(real), y_real), params)
        g_real = [g.detach() for g in g_real]
        y_syn = torch.full((s.shape[0],), c, dtype=torch.long, device=s.device)
        g_syn = torch.autograd.grad(F.cross_entropy(net(s), y_syn), params, create_graph=True)
        loss = loss + gradient_distance(g_syn, g_real)
    return loss


@register_method("gm")
def gradient_matching(
    syn: Tensor,
    sampler: ClassSampler,
    num_classes: int,
    config: DistillConfig,
    generator: torch.Generator,
    device: torch.device,
    steps: Any,
) -> MethodResult:
    """Gradient matching (DC, Zhao et al. ICLR 2021; with DSA, ICML 2021).

    Each iteration: a fresh random ConvNet; ``gm_outer_loop`` times: match per class the
    gradient of the CE loss on a real batch and on the synthetic images (same DSA transform),
    update the images, then train the net ``gm_inner_loop`` steps on the synthetic set.
    """
    net = _make_net(num_classes, config, device)
    net.train()
    dsa = _make_dsa(config)
    opt_img = torch.optim.SGD([syn], lr=config.lr_img, momentum=0.5)
    labels = torch.arange(num_classes, device=device).repeat_interleave(config.ipc)
    result = MethodResult()
    for _ in steps:
        reset_parameters(net, generator)
        opt_net = torch.optim.SGD(net.parameters(), lr=config.gm_lr_net)
        total = 0.0
        for outer in range(config.gm_outer_loop):
            real = _real_batches(sampler, num_classes, config, generator, device)
            loss = _gm_loss(net, syn, real, config.ipc, dsa, generator)
            opt_img.zero_grad(set_to_none=True)
            loss.backward()
            opt_img.step()
            total += float(loss.detach())
            if outer == config.gm_outer_loop - 1:
                break
            x_syn = syn.detach()
            for _ in range(config.gm_inner_loop):
                x = dsa(x_syn, generator) if dsa is not None else x_syn
                opt_net.zero_grad(set_to_none=True)
                F.cross_entropy(net(x), labels).backward()
                opt_net.step()
        result.losses.append(total / (config.gm_outer_loop * num_classes))
    return result


def gm_matching_loss(
    syn: Tensor,
    real_by_class: list[Tensor],
    ipc: int,
    num_nets: int = 5,
    seed: int = 0,
    width: int = 128,
    depth: int = 3,
) -> float:
    """Mean gradient-matching distance over ``num_nets`` fresh random ConvNets (no DSA)."""
    return _mean_over_random_nets(_gm_loss, syn, real_by_class, ipc, num_nets, seed, width, depth)
