#!/usr/bin/env python3
"""PyTorch reference for mixtrain's benchmark workloads (../shared/BENCHMARKS.md).

Builds the same models, trains them the same way (Adam lr 1e-3 betas 0.9/0.999 eps 1e-8, fused;
sparse softmax cross-entropy; random inputs generated once on the device, rotating among 4
batches; GradScaler with initial scale 65536 for FP16) and times them with CUDA events after a
warm-up: eager, torch.compile and torch.compile(mode="reduce-overhead") (CUDA graphs), FP32 (strict, no TF32), TF32, AMP FP16 and AMP BF16.

Usage: python3 bench/pytorch_reference.py [--workloads small_mlp,large_mlp] [--steps 200]
                                          [--json out.json]
Prints one line per run and a table; --json writes every figure.
"""
import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

WORKLOADS = {
    "small_mlp": dict(batch=64),
    "large_mlp": dict(batch=512),
    "resnet18_cifar": dict(batch=256),
    "gpt_small": dict(batch=32),
}


def small_mlp():
    return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Dropout(0.2), nn.Linear(512, 256),
                         nn.ReLU(), nn.Linear(256, 10))


def large_mlp():
    return nn.Sequential(nn.Linear(784, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(),
                         nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 10))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                       nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.b1(self.c1(x)))
        y = self.b2(self.c2(y))
        return F.relu(y + (x if self.short is None else self.short(x)))


def resnet18_cifar():
    layers = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 10)]
    return nn.Sequential(*layers)


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.out = nn.Linear(4 * d, d)
        self.heads = heads

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class Gpt(nn.Module):
    def __init__(self, vocab=256, ctx=256, d=512, heads=8, layers=6):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, idx):
        t = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln(x))


def make(name, batch, device):
    g = torch.Generator(device=device).manual_seed(0)
    if name == "gpt_small":
        model = Gpt()
        xs = [torch.randint(0, 256, (batch, 256), device=device, generator=g) for _ in range(4)]
        ys = [torch.randint(0, 256, (batch, 256), device=device, generator=g) for _ in range(4)]
    elif name == "resnet18_cifar":
        model = resnet18_cifar().to(memory_format=torch.channels_last)
        xs = [torch.randn(batch, 3, 32, 32, device=device, generator=g).to(
            memory_format=torch.channels_last) for _ in range(4)]
        ys = [torch.randint(0, 10, (batch,), device=device, generator=g) for _ in range(4)]
    else:
        model = small_mlp() if name == "small_mlp" else large_mlp()
        xs = [torch.rand(batch, 784, device=device, generator=g) for _ in range(4)]
        ys = [torch.randint(0, 10, (batch,), device=device, generator=g) for _ in range(4)]
    return model.to(device), xs, ys


def run(name, precision, variant, steps, warmup, device):
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.benchmark = True  # cuDNN's autotuner, as tuned CNN training uses it
    batch = WORKLOADS[name]["batch"]
    torch.manual_seed(0)
    model, xs, ys = make(name, batch, device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, fused=True)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    scaler = torch.amp.GradScaler("cuda", init_scale=65536.0, enabled=precision == "fp16")

    def loss_fn(x, y):
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(x)
            return F.cross_entropy(out.float().view(-1, out.shape[-1]), y.view(-1))

    if variant == "eager":
        fwd = loss_fn
    elif variant == "compile":
        fwd = torch.compile(loss_fn)
    elif variant == "reduce-overhead":  # torch.compile with CUDA graphs
        fwd = torch.compile(loss_fn, mode="reduce-overhead")
    else:
        raise ValueError(f"unknown variant {variant}")

    def step(i):
        if variant == "reduce-overhead":  # a new iteration: earlier graph outputs may be reused
            torch.compiler.cudagraph_mark_step_begin()
        opt.zero_grad(set_to_none=True)
        loss = fwd(xs[i % 4], ys[i % 4])
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss

    for i in range(warmup):
        step(i)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    windows = []
    for w in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for i in range(steps):
            step(i)
        end.record()
        end.synchronize()
        windows.append(start.elapsed_time(end) / steps)
    ms = statistics.median(windows)
    # End to end: inputs from host memory each step, loss read back every step.
    host_x = [x.cpu().pin_memory() for x in xs]
    host_y = [y.cpu().pin_memory() for y in ys]
    t0 = time.perf_counter()
    e2e_steps = max(steps // 2, 10)
    for i in range(e2e_steps):
        xs[i % 4].copy_(host_x[i % 4], non_blocking=True)
        ys[i % 4].copy_(host_y[i % 4], non_blocking=True)
        step(i).item()
    e2e_ms = (time.perf_counter() - t0) * 1e3 / e2e_steps
    return dict(workload=name, precision=precision, variant=variant,
                batch=batch, step_ms=ms, samples_per_s=batch / ms * 1e3,
                e2e_step_ms=e2e_ms, e2e_samples_per_s=batch / e2e_ms * 1e3,
                peak_mem_mb=torch.cuda.max_memory_allocated() / 2**20)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workloads", default="small_mlp,large_mlp")
    ap.add_argument("--precisions", default="fp32,tf32,fp16,bf16")
    ap.add_argument("--variants", default="eager,compile,reduce-overhead")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--json")
    a = ap.parse_args()
    device = "cuda"
    print(f"torch {torch.__version__} cuda {torch.version.cuda} cudnn "
          f"{torch.backends.cudnn.version()} gpu {torch.cuda.get_device_name()}", flush=True)
    results = []
    for name in a.workloads.split(","):
        for precision in a.precisions.split(","):
            for variant in a.variants.split(","):
                try:
                    r = run(name, precision, variant, a.steps, a.warmup, device)
                except Exception as e:  # a failed variant must not hide the others
                    print(f"{name} {precision} {variant}: failed: {e}", file=sys.stderr, flush=True)
                    continue
                results.append(r)
                print(f"{name:15s} {precision:5s} {variant:8s} {r['samples_per_s']:12,.0f} samples/s "
                      f"{r['step_ms']:8.3f} ms  e2e {r['e2e_samples_per_s']:12,.0f}/s  "
                      f"peak {r['peak_mem_mb']:8.1f} MB", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(torch=torch.__version__, cudnn=torch.backends.cudnn.version(),
                           gpu=torch.cuda.get_device_name(), results=results), f, indent=1)


if __name__ == "__main__":
    main()
