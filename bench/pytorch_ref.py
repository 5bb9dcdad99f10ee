#!/usr/bin/env python3
"""PyTorch reference for the speed comparison against the Rust/libtorch tool `diffuse`.

Implements the UNet of ../shared/SPEC.md ("The UNet (shared by every part)") exactly and
measures, on random pre-generated data:
  * training throughput (images/s, a full Adam step: zero_grad, forward, MSE, backward, step),
  * sampling throughput (images/s of a full sampler run, extrapolated from the mean time of
    one sampler step): 40 samples, DDPM with 300 steps for ddpm/cfg, Euler with 50 steps
    for flow; cfg/flow sample 4 of each digit with guidance batched as one forward of
    batch 80 (conditional + unconditional halves),
  * peak RSS of the process.

With --loss-curve it instead trains on real MNIST ($MNIST_DIR) and writes the per-step loss.
With --check it only asserts the parameter counts of SPEC.md's table for every model/D.
"""

import argparse
import gzip
import json
import math
import os
import resource
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# --------------------------------------------------------------------------------------
# The UNet (SPEC.md)
# --------------------------------------------------------------------------------------


class Conv(nn.Module):
    """3x3 conv stride 1 pad 1, BatchNorm2d, GELU."""

    def __init__(self, i, o):
        super().__init__()
        self.conv = nn.Conv2d(i, o, 3, stride=1, padding=1)
        self.bn = nn.BatchNorm2d(o)

    def forward(self, x):
        return F.gelu(self.bn(self.conv(x)))


class ConvBlock(nn.Module):
    def __init__(self, i, o):
        super().__init__()
        self.c1 = Conv(i, o)
        self.c2 = Conv(o, o)

    def forward(self, x):
        return self.c2(self.c1(x))


class DownConv(nn.Module):
    """3x3 conv stride 2 pad 1, BatchNorm2d, GELU."""

    def __init__(self, i, o):
        super().__init__()
        self.conv = nn.Conv2d(i, o, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(o)

    def forward(self, x):
        return F.gelu(self.bn(self.conv(x)))


class UpConv(nn.Module):
    """4x4 transposed conv stride 2 pad 1, BatchNorm2d, GELU."""

    def __init__(self, i, o):
        super().__init__()
        self.conv = nn.ConvTranspose2d(i, o, 4, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(o)

    def forward(self, x):
        return F.gelu(self.bn(self.conv(x)))


class DownBlock(nn.Module):
    def __init__(self, i, o):
        super().__init__()
        self.down = DownConv(i, o)
        self.block = ConvBlock(o, o)

    def forward(self, x):
        return self.block(self.down(x))


class UpBlock(nn.Module):
    def __init__(self, i, o):
        super().__init__()
        self.up = UpConv(i, o)
        self.block = ConvBlock(o, o)

    def forward(self, x):
        return self.block(self.up(x))


class Flatten(nn.Module):
    """7x7 average pool to 1x1, GELU."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AvgPool2d(7)

    def forward(self, x):
        return F.gelu(self.pool(x))


class Unflatten(nn.Module):
    """7x7 transposed conv stride 7 (1x1 -> 7x7), BatchNorm2d, GELU."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.ConvTranspose2d(c, c, 7, stride=7)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return F.gelu(self.bn(self.conv(x)))


class FCBlock(nn.Module):
    """Linear(i,o), GELU, Linear(o,o)."""

    def __init__(self, i, o):
        super().__init__()
        self.l1 = nn.Linear(i, o)
        self.l2 = nn.Linear(o, o)

    def forward(self, x):
        return self.l2(F.gelu(self.l1(x)))


class UNet(nn.Module):
    """SPEC.md UNet. cond in {"none", "time", "class"} ("class" = time + class)."""

    def __init__(self, D=64, cond="none", num_classes=10):
        super().__init__()
        self.cond = cond
        self.inc = ConvBlock(1, D)
        self.down1 = DownBlock(D, D)
        self.down2 = DownBlock(D, 2 * D)
        self.flatten = Flatten()
        self.unflatten = Unflatten(2 * D)
        self.up1 = UpBlock(4 * D, D)
        self.up2 = UpBlock(2 * D, D)
        self.outc = ConvBlock(2 * D, D)
        self.last = nn.Conv2d(D, 1, 3, stride=1, padding=1)  # no norm, no activation
        if cond in ("time", "class"):
            self.fc_t1 = FCBlock(1, 2 * D)
            self.fc_t2 = FCBlock(1, D)
        if cond == "class":
            self.fc_c1 = FCBlock(num_classes, 2 * D)
            self.fc_c2 = FCBlock(num_classes, D)

    def forward(self, x, t=None, c=None):
        x0 = self.inc(x)  # [N, D, 28, 28]
        d1 = self.down1(x0)  # [N, D, 14, 14]
        d2 = self.down2(d1)  # [N, 2D, 7, 7]
        u0 = self.unflatten(self.flatten(d2))  # [N, 2D, 7, 7]
        if self.cond == "time":
            u0 = u0 + self.fc_t1(t)[:, :, None, None]
        elif self.cond == "class":
            u0 = self.fc_c1(c)[:, :, None, None] * u0 + self.fc_t1(t)[:, :, None, None]
        u1 = self.up1(torch.cat([u0, d2], dim=1))  # [N, D, 14, 14]
        if self.cond == "time":
            u1 = u1 + self.fc_t2(t)[:, :, None, None]
        elif self.cond == "class":
            u1 = self.fc_c2(c)[:, :, None, None] * u1 + self.fc_t2(t)[:, :, None, None]
        u2 = self.up2(torch.cat([u1, d1], dim=1))  # [N, D, 28, 28]
        return self.last(self.outc(torch.cat([u2, x0], dim=1)))


MODEL_COND = {"denoiser": "none", "ddpm": "time", "cfg": "class", "flow": "class"}

# SPEC.md's table: trainable parameters.
EXPECTED_PARAMS = {
    (64, "none"): 1_975_361,
    (64, "time"): 1_996_417,
    (64, "class"): 2_019_201,
    (128, "none"): 7_891_073,
    (128, "time"): 7_974_145,
    (128, "class"): 8_060_673,
}


def count_params(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def check_params(model, D, cond):
    n = count_params(model)
    want = EXPECTED_PARAMS.get((D, cond))
    if want is not None:
        assert n == want, f"D={D} cond={cond}: {n} trainable params, SPEC.md says {want}"
    return n


def run_check():
    ok = True
    for D in (64, 128):
        for model_name, cond in MODEL_COND.items():
            n = count_params(UNet(D, cond))
            want = EXPECTED_PARAMS[(D, cond)]
            status = "ok" if n == want else "MISMATCH"
            ok &= n == want
            print(f"{model_name:9s} D={D:<4d} cond={cond:6s} params={n:>10,d} spec={want:>10,d} {status}")
    if not ok:
        sys.exit("parameter count check FAILED")
    print("parameter count check passed")


# --------------------------------------------------------------------------------------
# Objectives
# --------------------------------------------------------------------------------------

T_DDPM = 300
P_UNCOND = 0.1
SIGMA_DENOISER = 0.5
LR = {"denoiser": 1e-4, "ddpm": 1e-3, "cfg": 1e-3, "flow": 1e-3}


class Schedule:
    """DDPM linear schedule. Index convention: t = 1..T is stored at index t-1;
    alpha_bar_0 (no noise) = 1 is used for the last sampling step."""

    def __init__(self, device):
        self.betas = torch.linspace(1e-4, 0.02, T_DDPM, dtype=torch.float64)
        self.alphas = 1.0 - self.betas
        self.alpha_bars = torch.cumprod(self.alphas, dim=0)
        self.betas_f = self.betas.float().to(device)
        self.alpha_bars_f = self.alpha_bars.float().to(device)


def objective(model_name, model, x, labels, sched, mem_fmt):
    """Draws the objective's noise/t (part of the timed step) and returns the MSE loss."""
    n = x.shape[0]
    dev = x.device
    if model_name == "denoiser":
        eps = torch.randn_like(x)
        z = x + SIGMA_DENOISER * eps
        return F.mse_loss(model(z.contiguous(memory_format=mem_fmt)), x)
    if model_name == "ddpm" or model_name == "cfg":
        t = torch.randint(1, T_DDPM + 1, (n,), device=dev)
        ab = sched.alpha_bars_f[t - 1].view(n, 1, 1, 1)
        eps = torch.randn_like(x)
        xt = ab.sqrt() * x + (1.0 - ab).sqrt() * eps
        tn = (t.float() / T_DDPM).view(n, 1)
        c = None
        if model_name == "cfg":
            c = F.one_hot(labels, 10).float()
            keep = (torch.rand(n, 1, device=dev) >= P_UNCOND).float()
            c = c * keep
        return F.mse_loss(model(xt.contiguous(memory_format=mem_fmt), tn, c), eps)
    if model_name == "flow":
        t = torch.rand(n, 1, device=dev)
        eps = torch.randn_like(x)
        tb = t.view(n, 1, 1, 1)
        xt = (1.0 - tb) * x + tb * eps
        c = F.one_hot(labels, 10).float()
        keep = (torch.rand(n, 1, device=dev) >= P_UNCOND).float()
        c = c * keep
        return F.mse_loss(model(xt.contiguous(memory_format=mem_fmt), t, c), eps - x)
    raise ValueError(model_name)


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def autocast_ctx(args, device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=(args.precision == "bf16"))


def peak_rss_mb():
    # ru_maxrss is in KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build(args, device):
    cond = MODEL_COND[args.model]
    model = UNet(args.hidden, cond).to(device)
    n = check_params(model, args.hidden, cond)
    mem_fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=mem_fmt)
    opt = torch.optim.Adam(model.parameters(), lr=LR[args.model])
    return model, opt, mem_fmt, n


def train_step(args, model, opt, x, labels, sched, mem_fmt, device):
    opt.zero_grad(set_to_none=True)
    with autocast_ctx(args, device):
        loss = objective(args.model, model, x, labels, sched, mem_fmt)
    loss.backward()
    opt.step()
    return loss


# --------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------


def time_training(args, model, opt, sched, mem_fmt, device):
    nb = args.warmup + args.steps
    g = torch.Generator().manual_seed(args.seed + 1)
    xs = [torch.rand(args.batch, 1, 28, 28, generator=g).to(device) for _ in range(nb)]
    ys = [torch.randint(0, 10, (args.batch,), generator=g).to(device) for _ in range(nb)]
    model.train()
    for i in range(args.warmup):
        train_step(args, model, opt, xs[i], ys[i], sched, mem_fmt, device)
    sync(device)
    if args.steps <= 0:
        return None, None
    t0 = time.perf_counter()
    for i in range(args.warmup, nb):
        loss = train_step(args, model, opt, xs[i], ys[i], sched, mem_fmt, device)
    sync(device)
    dt = time.perf_counter() - t0
    last = float(loss.detach())
    assert math.isfinite(last), f"non-finite training loss {last}"
    return args.batch * args.steps / dt, 1000.0 * dt / args.steps


N_SAMPLES = 40
GUIDANCE = 5.0
SAMPLER_STEPS = {"ddpm": T_DDPM, "cfg": T_DDPM, "flow": 50}


def time_sampling(args, model, sched, mem_fmt, device):
    """Mean time of one sampler step (forward + update), extrapolated to a full run."""
    if args.model == "denoiser" or args.sample_steps <= 0:
        return None, None
    model.eval()
    n = N_SAMPLES
    total = SAMPLER_STEPS[args.model]
    guided = args.model in ("cfg", "flow")
    if guided:
        digits = torch.arange(10, device=device).repeat_interleave(4)  # 4 per digit
        c_cond = F.one_hot(digits, 10).float()
        c_both = torch.cat([c_cond, torch.zeros_like(c_cond)], dim=0)  # [80, 10]
    g = torch.Generator().manual_seed(args.seed + 2)
    x = torch.randn(n, 1, 28, 28, generator=g).to(device)

    def eps_at(x, tn):
        t = torch.full((x.shape[0], 1), tn, device=device)
        if not guided:
            with autocast_ctx(args, device):
                out = model(x.contiguous(memory_format=mem_fmt), t)
            return out.float()
        xx = torch.cat([x, x], dim=0).contiguous(memory_format=mem_fmt)
        tt = torch.cat([t, t], dim=0)
        with autocast_ctx(args, device):
            out = model(xx, tt, c_both).float()
        e_c, e_u = out[:n], out[n:]
        return e_u + GUIDANCE * (e_c - e_u)

    def ddpm_step(x, t):  # t in T..1
        ab_t = sched.alpha_bars_f[t - 1]
        ab_prev = sched.alpha_bars_f[t - 2] if t > 1 else torch.tensor(1.0, device=device)
        beta_t = sched.betas_f[t - 1]
        alpha_t = 1.0 - beta_t
        eps = eps_at(x, t / T_DDPM)
        x0_hat = (x - (1.0 - ab_t).sqrt() * eps) / ab_t.sqrt()
        z = torch.randn_like(x) if t > 1 else torch.zeros_like(x)
        return (ab_prev.sqrt() * beta_t / (1.0 - ab_t) * x0_hat
                + alpha_t.sqrt() * (1.0 - ab_prev) / (1.0 - ab_t) * x
                + beta_t.sqrt() * z)

    def flow_step(x, i):  # Euler from t=1 (noise) to t=0 (data); v = eps - x0 = dx/dt
        dt = 1.0 / total
        t = 1.0 - i * dt
        v = eps_at(x, t)
        return x - dt * v

    step = flow_step if args.model == "flow" else ddpm_step
    idx = (lambda i: i) if args.model == "flow" else (lambda i: T_DDPM - i)
    warm = min(max(2, args.warmup), total)  # untimed sampler steps first
    with torch.inference_mode():
        for i in range(warm):
            x = step(x, idx(i))
        sync(device)
        k = args.sample_steps
        t0 = time.perf_counter()
        for i in range(warm, warm + k):
            x = step(x, idx(i % total))
        sync(device)
        dt = time.perf_counter() - t0
    assert torch.isfinite(x).all(), "non-finite sample"
    per_step = dt / k
    return n / (total * per_step), 1000.0 * per_step


# --------------------------------------------------------------------------------------
# Loss curve on real MNIST
# --------------------------------------------------------------------------------------


def read_idx_gz(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    ndim = magic & 0xFF
    assert (magic >> 8) == 0x08, f"{path}: not unsigned-byte IDX (magic {magic:#x})"
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    return arr.reshape(dims)


def loss_curve(args, device):
    mnist_dir = os.environ.get("MNIST_DIR")
    if not mnist_dir:
        sys.exit("--loss-curve needs $MNIST_DIR (folder with train-images-idx3-ubyte.gz ...)")
    imgs = read_idx_gz(os.path.join(mnist_dir, "train-images-idx3-ubyte.gz"))
    labels = read_idx_gz(os.path.join(mnist_dir, "train-labels-idx1-ubyte.gz"))
    assert imgs.shape == (60000, 28, 28) and labels.shape == (60000,)
    imgs = torch.from_numpy(imgs.astype(np.float32) / 255.0).unsqueeze(1)  # [60000,1,28,28]
    labels = torch.from_numpy(labels.astype(np.int64))

    model, opt, mem_fmt, _ = build(args, device)
    sched = Schedule(device)
    model.train()
    rng = np.random.default_rng(args.seed)
    n = imgs.shape[0]
    per_epoch = n // args.batch  # drop the last partial batch
    perm, pos = rng.permutation(n), 0
    rows = []
    t0 = time.perf_counter()
    for step in range(1, args.loss_steps + 1):
        if pos >= per_epoch:
            perm, pos = rng.permutation(n), 0
        idx = torch.from_numpy(perm[pos * args.batch:(pos + 1) * args.batch])
        pos += 1
        x = imgs[idx].to(device)
        y = labels[idx].to(device)
        loss = float(train_step(args, model, opt, x, y, sched, mem_fmt, device).detach())
        rows.append((step, loss))
        if not args.json and (step % 50 == 0 or step == args.loss_steps):
            print(f"step {step} loss {loss:.6f}", file=sys.stderr)
    sync(device)
    dt = time.perf_counter() - t0
    with open(args.loss_curve, "w") as f:
        f.write("step,loss\n")
        for s, l in rows:
            f.write(f"{s},{l:.8g}\n")
    print(f"wrote {len(rows)} losses to {args.loss_curve} ({dt:.1f} s, {args.model}, "
          f"D={args.hidden}, batch {args.batch}, {args.precision})", file=sys.stderr)


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["denoiser", "ddpm", "cfg", "flow"], default="cfg")
    p.add_argument("--hidden", type=int, default=64, help="D, hidden channels")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16 = autocast around forward+loss; fp32 weights and Adam")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--warmup", type=int, default=3, help="untimed training steps")
    p.add_argument("--steps", type=int, default=10, help="timed training steps")
    p.add_argument("--sample-steps", type=int, default=20, help="timed sampler steps (0 = skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object on one line")
    p.add_argument("--loss-curve", metavar="PATH", help="train on real MNIST ($MNIST_DIR), write step,loss CSV")
    p.add_argument("--loss-steps", type=int, default=200)
    p.add_argument("--check", action="store_true", help="only check parameter counts of every model, D in {64,128}")
    args = p.parse_args()

    if args.check:
        run_check()
        return

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    if device.type == "cuda":
        assert torch.cuda.is_available(), "--device cuda but CUDA is not available"

    if args.loss_curve:
        loss_curve(args, device)
        return

    model, opt, mem_fmt, nparams = build(args, device)
    sched = Schedule(device)
    train_ips, train_ms = time_training(args, model, opt, sched, mem_fmt, device)
    sample_ips, sample_ms = time_sampling(args, model, sched, mem_fmt, device)

    def r(v, nd):
        return None if v is None else round(v, nd)

    result = {
        "engine": "pytorch",
        "model": args.model,
        "hidden": args.hidden,
        "batch": args.batch,
        "precision": args.precision,
        "channels_last": bool(args.channels_last),
        "device": args.device,
        "threads": args.threads,
        "train_img_per_s": r(train_ips, 3),
        "sample_img_per_s": r(sample_ips, 4),
        "peak_rss_mb": r(peak_rss_mb(), 1),
        # extras
        "train_ms_per_step": r(train_ms, 2),
        "sample_ms_per_step": r(sample_ms, 2),
        "params": nparams,
        "torch": torch.__version__,
    }
    if args.json:
        print(json.dumps(result), flush=True)
        return
    print(f"pytorch {torch.__version__}  model={args.model} D={args.hidden} params={nparams:,} "
          f"batch={args.batch} {args.precision}{' channels_last' if args.channels_last else ''} "
          f"device={args.device} threads={args.threads}")
    fmt = lambda v, u: "-" if v is None else f"{v:.2f} {u}"
    print(f"  {'train':8s} {fmt(train_ips, 'img/s'):>16s}  {fmt(train_ms, 'ms/step'):>16s}  "
          f"({args.steps} steps after {args.warmup} warm-up)")
    if args.model != "denoiser":
        steps = SAMPLER_STEPS[args.model]
        kind = "Euler" if args.model == "flow" else "DDPM"
        print(f"  {'sample':8s} {fmt(sample_ips, 'img/s'):>16s}  {fmt(sample_ms, 'ms/step'):>16s}  "
              f"(40 images, {steps}-step {kind}, {args.sample_steps} steps timed)")
    else:
        print(f"  {'sample':8s} {'-':>16s}")
    print(f"  peak RSS {peak_rss_mb():.1f} MB")


if __name__ == "__main__":
    main()
