"""`vdvae`: the very deep VAE of Child 2021 ("Very Deep VAEs Generalize Autoregressive Models
and Can Outperform Them on Images", ICLR).

A bottom-up stack of bottleneck residual blocks reads the image once; each
resolution's last activation is kept. A top-down stack of blocks then draws one
latent group per block: a block reads the top-down state at its resolution,
its prior p(z | z_>) comes from that state alone and its posterior
q(z | x, z_>) from the state concatenated with the bottom-up activation of the
same resolution; the prior block also emits a residual update of the state, z
enters it through a 1×1 projection, and a residual block follows. A block
written `RmS` first adds the state of resolution S, nearest-upsampled to R
(VDVAE's unpool). Every prior's parents are drawn before the group it
conditions, so every KL is analytic.

The layout is VDVAE's own strings: `enc_blocks` "32x11,32d2,16x6,..." (11
blocks at 32×32, then one that average-pools by 2, ...) and `dec_blocks`
"1x1,4m1,4x2,..." (one block at 1×1, one at 4×4 that mixes in the 1×1 state,
two more at 4×4, ...). The stabilisers are VDVAE's: every residual block's last
1×1 conv and every z projection is initialised scaled by 1/√(blocks of its
stack), the prior block's last conv starts at zero (`zero_prior`: each block
starts as the identity with p = N(0, I)), and the run's `train.grad_clip` and
`train.skip_threshold` clip and skip steps by gradient norm.

Where this differs from the official code (none changes the parameter count:
the CIFAR-10 hyper-parameters build exactly its 39,145,700 parameters,
tests/test_vdvae.py): μ and log σ pass the project's soft clamp 5·tanh(v/5)
(`latents.DiagonalGaussian`; small values almost unchanged, 1% at |v| = 0.87),
so a KL cannot blow up under bf16; z's projection runs in fp32 under autocast,
like every other model's latent-to-features layer; the likelihood is the
task's head (`likelihoods.py`: the discretised logistic mixture for 8-bit
images, the official head's 10·M output channels for RGB in another order, and
its log-scale floor of −7 reached smoothly; Bernoulli or Gaussian otherwise);
and every latent layer is a group named `r<R>.<i>`, the
i-th group at R×R, with its collapse also summarised per resolution
(`res<R>`, `group_summaries`).
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hvbench.blocks import compute_dtype
from hvbench.errors import UserError
from hvbench.latents import AncestralModel, DiagonalGaussian, LatentSample, draw
from hvbench.likelihoods import get_likelihood
from hvbench.options import AT_LEAST_0, AT_LEAST_1, POSITIVE, option
from hvbench.registry import register_model
from hvbench.task import TaskSpec

_TOKEN = re.compile(r"([0-9]+)(?:([xdm])([0-9]+))?")


@dataclass(frozen=True)
class VDVAEConfig:
    """VDVAE's hyper-parameters under their official names (defaults: a CPU-sized 32×32 net)."""

    width: int = option(32, range=AT_LEAST_1)  # channels of every residual stream
    zdim: int = option(4, range=AT_LEAST_1)  # channels of a latent group (a channel is a unit)
    # a block's inner width, as a fraction of `width`
    bottleneck_multiple: float = option(0.25, range=POSITIVE)
    # the layout as VDVAE's strings; empty: derived from the image (`auto_layout`)
    enc_blocks: str = ""
    dec_blocks: str = ""
    blocks_per_res: int = option(2, range=AT_LEAST_1)  # blocks per resolution, derived layout
    # a learned initial top-down state at resolutions up to this (0: none)
    no_bias_above: int = option(64, range=AT_LEAST_0)
    activation: Literal["gelu", "silu"] = "gelu"  # VDVAE: GELU; Efficient-VDVAE: SiLU
    # the prior block's last conv starts at zero (VDVAE; Efficient-VDVAE found it makes no
    # difference and leaves it off): each block then starts as the identity with p = N(0, I)
    zero_prior: bool = True
    mixtures: int = option(10, range=AT_LEAST_1)  # logistic mixture components (dlogistic only)


def auto_layout(image: int, per_res: int) -> tuple[str, str]:
    """A layout for any image size, as VDVAE's strings: resolutions halve while they are even
    and above 4, then one pool reaches 1×1; `per_res` blocks at each (bottom-up, the last one
    pooling; top-down, the first one mixing in the resolution below). A file task's images
    have the user's size, so its config cannot spell the strings out."""
    sizes = [image]
    while sizes[-1] > 4 and sizes[-1] % 2 == 0:
        sizes.append(sizes[-1] // 2)
    if sizes[-1] > 1:
        sizes.append(1)
    more = per_res - 1  # blocks besides the pooling (bottom-up) or mixing (top-down) one
    enc, dec = [], [f"1x{per_res}"]
    for high, low in itertools.pairwise(sizes):
        enc += [f"{high}x{more}"] * (more > 0) + [f"{high}d{high // low}"]
    for low, high in itertools.pairwise(sizes[::-1]):
        dec += [f"{high}m{low}"] + [f"{high}x{more}"] * (more > 0)
    return ",".join([*enc, f"1x{per_res}"]), ",".join(dec)


def parse_blocks(text: str, key: str) -> list[tuple[int, str, int]]:
    """A VDVAE layout string as (resolution, kind, argument) per block: kind `x` repeats
    (expanded to one ("x", 0) block each), `d` pools by the argument, `m` mixes in the
    state of the argument's resolution; a bare resolution is one plain block."""
    blocks: list[tuple[int, str, int]] = []
    for token in text.replace(" ", "").split(","):
        match = _TOKEN.fullmatch(token)
        if not match or int(match.group(1)) < 1:
            raise UserError(
                f"config key 'model.{key}' has {token!r}: write blocks as RxN (N blocks at "
                "R×R), RdK (one block, then pool by K), RmS (one block mixing in S×S) or R"
            )
        res, kind, arg = int(match.group(1)), match.group(2) or "x", int(match.group(3) or 1)
        if arg < 1:
            raise UserError(f"config key 'model.{key}' has {token!r}: the number must be >= 1")
        if kind == "x":
            blocks += [(res, "x", 0)] * arg
        else:
            blocks.append((res, kind, arg))
    return blocks


class Bottleneck(nn.Module):
    """VDVAE's block: act → 1×1 → act → 3×3 → act → 3×3 → act → 1×1 (3×3s become 1×1s at 2×2
    and below, where they would see mostly padding), optionally residual, then average-pooled
    by `down`. Biases start at zero; the last conv's weights are scaled by `last_scale`."""

    def __init__(
        self,
        width_in: int,
        middle: int,
        width_out: int,
        res: int,
        activation: str,
        residual: bool = True,
        last_scale: float = 1.0,
        down: int = 0,
    ):
        super().__init__()
        k = 3 if res > 2 else 1
        self.convs = nn.ModuleList(
            [
                nn.Conv2d(width_in, middle, 1),
                nn.Conv2d(middle, middle, k, padding=k // 2),
                nn.Conv2d(middle, middle, k, padding=k // 2),
                nn.Conv2d(middle, width_out, 1),
            ]
        )
        for conv in self.convs:
            nn.init.zeros_(conv.bias)
        with torch.no_grad():
            self.convs[-1].weight.mul_(last_scale)
        self.act = F.gelu if activation == "gelu" else F.silu
        self.residual, self.down = residual, down

    def forward(self, x: Tensor) -> Tensor:
        h = x
        for conv in self.convs:
            h = conv(self.act(h))
        out = x + h if self.residual else h
        return F.avg_pool2d(out, self.down) if self.down > 1 else out


class TopDownBlock(nn.Module):
    """One latent group: prior and state update from the state, posterior from the state and
    the bottom-up activation, z projected into the state, then a residual block."""

    def __init__(self, cfg: VDVAEConfig, res: int, mixin: int, n_blocks: int):
        super().__init__()
        w, middle, zdim = cfg.width, int(cfg.width * cfg.bottleneck_multiple), cfg.zdim
        scale = 1 / math.sqrt(n_blocks)
        self.res, self.mixin, self.zdim = res, mixin, zdim
        self.posterior = Bottleneck(2 * w, middle, 2 * zdim, res, cfg.activation, residual=False)
        self.prior = Bottleneck(w, middle, 2 * zdim + w, res, cfg.activation, residual=False)
        if cfg.zero_prior:
            nn.init.zeros_(self.prior.convs[-1].weight)
        self.z_proj = nn.Conv2d(zdim, w, 1)
        nn.init.zeros_(self.z_proj.bias)
        with torch.no_grad():
            self.z_proj.weight.mul_(scale)
        self.resnet = Bottleneck(w, middle, w, res, cfg.activation, last_scale=scale)

    def forward(
        self, state: Tensor, acts: Tensor | None
    ) -> tuple[Tensor, DiagonalGaussian, DiagonalGaussian | None]:
        """The new state, p, and q (None without `acts`: a prior draw). z is drawn by the
        caller, so one block serves the posterior and the prior pass."""
        feats = self.prior(state)
        p = DiagonalGaussian.from_params(feats[:, : 2 * self.zdim])
        q = (
            None
            if acts is None
            else DiagonalGaussian.from_params(self.posterior(torch.cat([state, acts], dim=1)))
        )
        return state + feats[:, 2 * self.zdim :], p, q

    def project(self, state: Tensor, z: Tensor) -> Tensor:
        """Add z to the state (projected in fp32 under autocast: bf16 would round z more
        coarsely than a tight posterior's σ; the projection cast once to the state's dtype)
        and run the residual block."""
        device = z.device.type
        with torch.autocast(device, enabled=False):
            update = self.z_proj(z.float())
        return self.resnet(state + update.to(compute_dtype(device, update.dtype)))


class VDVAE(AncestralModel):
    def __init__(self, cfg: VDVAEConfig, spec: TaskSpec):
        super().__init__()
        channels, height, width = spec.shape
        if height != width:
            raise UserError(f"vdvae takes square images, got {height}×{width}")
        self.head = get_likelihood(spec.likelihood, channels, cfg.mixtures)
        derived = auto_layout(height, cfg.blocks_per_res)
        enc = parse_blocks(cfg.enc_blocks or derived[0], "enc_blocks")
        dec = parse_blocks(cfg.dec_blocks or derived[1], "dec_blocks")
        self.enc_resolutions = _check_layout(enc, dec, height)
        w, middle = cfg.width, int(cfg.width * cfg.bottleneck_multiple)
        if middle < 1:
            raise UserError(
                f"config keys 'model.width' × 'model.bottleneck_multiple' give {middle} channels "
                "inside a block; make them at least 1"
            )
        self.image_res = height
        self.in_conv = nn.Conv2d(channels, w, 3, padding=1)
        nn.init.zeros_(self.in_conv.bias)
        self.encoder = nn.ModuleList(
            Bottleneck(
                w,
                middle,
                w,
                res,
                cfg.activation,
                last_scale=1 / math.sqrt(len(enc)),
                down=arg if kind == "d" else 0,
            )
            for res, kind, arg in enc
        )
        self.decoder = nn.ModuleList(
            TopDownBlock(cfg, res, arg if kind == "m" else 0, len(dec)) for res, kind, arg in dec
        )
        self.dec_resolutions = sorted({res for res, _, _ in dec})
        self.bias_res = [r for r in self.dec_resolutions if r <= cfg.no_bias_above]
        self.bias_xs = nn.ParameterList(torch.zeros(1, w, r, r) for r in self.bias_res)
        self.gain = nn.Parameter(torch.ones(1, w, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, w, 1, 1))
        self.out = nn.Conv2d(w, self.head.out_channels, 1)
        nn.init.zeros_(self.out.bias)
        counts: dict[int, int] = {}
        self.group_names = []
        for block in self.decoder:
            self.group_names.append(f"r{block.res}.{counts.get(block.res, 0):02d}")
            counts[block.res] = counts.get(block.res, 0) + 1
        # the board summarises dozens of groups per resolution; metrics.json keeps each group
        self.group_summaries = {
            f"res{r}": tuple(g for g in self.group_names if g.startswith(f"r{r}."))
            for r in self.dec_resolutions
        }

    def features(self, x: Tensor) -> list[Tensor]:
        """The bottom-up activation of every resolution the top-down blocks read."""
        h = self.in_conv(self.head.prepare(x))
        acts = {h.shape[-1]: h}
        for block in self.encoder:
            h = block(h)
            acts[h.shape[-1]] = h
        return [acts[r] for r in self.enc_resolutions]

    def ancestral_pass(
        self, features: list[Tensor] | None, n: int
    ) -> tuple[Tensor, dict[str, LatentSample]]:
        """Top-down from 1×1 to the image: posterior draws given `features`, prior draws
        without; the state of each resolution is carried in `states`."""
        acts = None if features is None else dict(zip(self.enc_resolutions, features, strict=True))
        # the state runs in autocast's dtype where it is on, like every activation: the learned
        # initial states are cast once here, z's update once in `project`
        dtype = compute_dtype(self.gain.device.type, self.gain.dtype)
        states = {
            r: b.to(dtype).expand(n, -1, -1, -1)
            for r, b in zip(self.bias_res, self.bias_xs, strict=True)
        }
        groups: dict[str, LatentSample] = {}
        for name, block in zip(self.group_names, self.decoder, strict=True):
            state = states.get(block.res)
            if state is None:
                state = self.gain.new_zeros(n, self.gain.shape[1], block.res, block.res, dtype=dtype)
            if block.mixin:
                state = state + F.interpolate(
                    states[block.mixin], scale_factor=block.res // block.mixin
                )
            state, p, q = block(state, None if acts is None else acts[block.res])
            if q is None:
                z = p.rsample()
            else:
                groups[name] = draw(q, p)
                z = groups[name].z
            states[block.res] = block.project(state, z)
        h = states[self.image_res] * self.gain + self.bias
        return self.out(h), groups


def _check_layout(
    enc: list[tuple[int, str, int]], dec: list[tuple[int, str, int]], image: int
) -> list[int]:
    """The resolutions the top-down blocks read from the bottom-up pass; a layout that does not
    fit the image or itself is a UserError naming what is wrong."""
    res, produced = image, {image}
    for block_res, kind, arg in enc:
        if block_res != res:
            raise UserError(
                f"config key 'model.enc_blocks': a block at {block_res}×{block_res} where the "
                f"bottom-up pass is at {res}×{res} (it starts at the image, {image}×{image})"
            )
        if kind == "d":
            if res % arg:
                raise UserError(f"config key 'model.enc_blocks': {res}d{arg} does not divide {res}")
            res //= arg
            produced.add(res)
        elif kind == "m":
            raise UserError("config key 'model.enc_blocks' takes RxN, RdK and R blocks only")
    if dec[-1][0] != image:
        raise UserError(
            f"config key 'model.dec_blocks' must end at the image's {image}×{image}, "
            f"not {dec[-1][0]}×{dec[-1][0]}"
        )
    seen: set[int] = set()
    for block_res, kind, arg in dec:
        if block_res not in produced:
            raise UserError(
                f"config key 'model.dec_blocks': no bottom-up activation at {block_res}×"
                f"{block_res} (model.enc_blocks reaches {', '.join(map(str, sorted(produced)))})"
            )
        if kind == "d":
            raise UserError("config key 'model.dec_blocks' takes RxN, RmS and R blocks only")
        if kind == "m" and (arg not in seen or block_res % arg):
            raise UserError(
                f"config key 'model.dec_blocks': {block_res}m{arg} mixes in {arg}×{arg}, which "
                "must come earlier and divide the block's resolution"
            )
        seen.add(block_res)
    return sorted(seen)


@register_model(
    "vdvae",
    config=VDVAEConfig,
    description="VDVAE (Child 2021): very deep top-down hierarchy, one latent group per block",
)
def build_vdvae(cfg: VDVAEConfig, spec: TaskSpec) -> VDVAE:
    return VDVAE(cfg, spec)
