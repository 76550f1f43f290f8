"""The slmlab baseline model written in Python PyTorch, for the side-by-side benchmark.

Same architecture, init and training step as src/model/gpt.cpp + src/train/trainer.cpp: token
embedding, parameter-free RMSNorm pre-norm blocks, causal attention with RoPE (half-split) and
QK-norm, document mask, ReLU^2 MLP, untied head, logit softcap 15, zero-init output projections,
Muon for block matrices and AdamW for the rest. Runs on Debian's python3-torch (1.13) or a 2.x.

  /usr/bin/python3 bench/py_model.py --depth 4 --aspect 64 --head-dim 64 --context 256 \
      --device-batch 16 --total-batch 8192 --steps 20 --precision bf16 --threads 2
prints one JSON line with tokens/s, step times (mean and median after the warm-up steps), the model's
FLOPs per token (slmlab's formula) and peak RSS. --device cuda runs it on the GPU (each timed step
ends with torch.cuda.synchronize, as slmlab's step ends by reading its loss); --compile wraps the
model in torch.compile (PyTorch >= 2.0; the compile happens in the warm-up steps, reported apart).
"""
import argparse
import json
import math
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def rms_norm(x):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype)


def rope_tables(T, D, base):
    i = torch.arange(0, D // 2, dtype=torch.float64)
    inv = base ** (-2.0 * i / D)
    ang = torch.outer(torch.arange(T, dtype=torch.float64), inv)
    return ang.cos().float(), ang.sin().float()


def apply_rope(x, cos, sin):
    T, half = x.size(1), x.size(3) // 2
    c = cos[:T].view(1, T, 1, half).to(x.dtype)
    s = sin[:T].view(1, T, 1, half).to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], 3)


class Attention(torch.nn.Module):
    def __init__(self, C, H, D):
        super().__init__()
        self.H, self.D = H, D
        self.c_q = torch.nn.Linear(C, C, bias=False)
        self.c_k = torch.nn.Linear(C, C, bias=False)
        self.c_v = torch.nn.Linear(C, C, bias=False)
        self.c_proj = torch.nn.Linear(C, C, bias=False)

    def forward(self, x, cos, sin, allowed):
        B, T, C = x.shape
        q = rms_norm(apply_rope(self.c_q(x).view(B, T, self.H, self.D), cos, sin)).transpose(1, 2)
        k = rms_norm(apply_rope(self.c_k(x).view(B, T, self.H, self.D), cos, sin)).transpose(1, 2)
        v = self.c_v(x).view(B, T, self.H, self.D).transpose(1, 2)
        if hasattr(F, "scaled_dot_product_attention"):
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        else:
            scores = torch.matmul(q, k.transpose(-2, -1)).float() * (1.0 / math.sqrt(self.D))
            scores = scores.masked_fill(~allowed, float("-inf"))
            y = torch.matmul(torch.softmax(scores, -1).to(v.dtype), v)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class Block(torch.nn.Module):
    def __init__(self, C, H, D):
        super().__init__()
        self.attn = Attention(C, H, D)
        self.c_fc = torch.nn.Linear(C, 4 * C, bias=False)
        self.c_proj = torch.nn.Linear(4 * C, C, bias=False)

    def forward(self, x, cos, sin, allowed):
        x = x + self.attn(rms_norm(x), cos, sin, allowed)
        h = torch.relu(self.c_fc(rms_norm(x)))
        return x + self.c_proj(h * h)


class GPT(torch.nn.Module):
    def __init__(self, V, L, C, H, D, T, softcap=15.0):
        super().__init__()
        self.softcap = softcap
        self.wte = torch.nn.Embedding(V, C)
        self.blocks = torch.nn.ModuleList([Block(C, H, D) for _ in range(L)])
        self.lm_head = torch.nn.Linear(C, V, bias=False)
        cos, sin = rope_tables(T, D, 10000.0)
        self.register_buffer("cos", cos)
        self.register_buffer("sin", sin)
        bound = math.sqrt(3.0) / math.sqrt(C)
        with torch.no_grad():
            self.wte.weight.normal_(0, 1)
            self.lm_head.weight.normal_(0, 0.001)
            for b in self.blocks:
                for lin in (b.attn.c_q, b.attn.c_k, b.attn.c_v, b.c_fc):
                    lin.weight.uniform_(-bound, bound)
                b.attn.c_proj.weight.zero_()
                b.c_proj.weight.zero_()

    def forward(self, idx, targets, doc):
        T = idx.size(1)
        same = doc.unsqueeze(2) == doc.unsqueeze(1)
        causal = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()
        allowed = (same & causal).unsqueeze(1)
        x = rms_norm(self.wte(idx))
        for b in self.blocks:
            x = b(x, self.cos, self.sin, allowed)
        z = self.lm_head(rms_norm(x)).float()
        z = torch.tanh(z / self.softcap) * self.softcap
        return F.cross_entropy(z.view(-1, z.size(-1)), targets.reshape(-1))


def flops_per_token(V, L, C, T):
    """slmlab's count (src/model/gpt.cpp): 6 x the matmul weights (head, attention q/k/v/proj, MLP;
    not the embedding) + 12 x layers x heads x head_dim x context for the attention scores."""
    return 6.0 * (V * C + L * 12 * C * C) + 12.0 * L * C * T


def zeropower(g, steps=5):
    a, b, c = 3.4445, -4.7750, 2.0315
    # bf16 Newton-Schulz on a GPU, fp32 on the CPU: what slmlab's Muon does (src/train/optim.cpp)
    X = g.bfloat16() if g.is_cuda else g.float()
    X = X / (X.norm() + 1e-7)
    tr = X.size(0) > X.size(1)
    if tr:
        X = X.T
    for _ in range(steps):
        A = X @ X.T
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    return (X.T if tr else X).to(g.dtype)


class Optim:
    """Muon for 2-D block matrices, AdamW for the rest (the same rules as src/train/optim.cpp)."""

    def __init__(self, model, lr_matrix=0.02, lr_embed=0.2, lr_head=0.004, lr_scalar=0.04, C=256):
        scale = (C / 768) ** -0.5
        self.groups = []
        mats = [p for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() == 2]
        self.groups.append(("muon", lr_matrix, mats))
        self.groups.append(("adamw", lr_embed * scale, [model.wte.weight]))
        self.groups.append(("adamw", lr_head * scale, [model.lm_head.weight]))
        self.state = {}
        self.t = 0

    @torch.no_grad()
    def step(self):
        self.t += 1
        for kind, lr, params in self.groups:
            for p in params:
                if p.grad is None:
                    continue
                g = p.grad
                st = self.state.setdefault(p, {})
                if kind == "muon":
                    buf = st.setdefault("m", torch.zeros_like(p))
                    buf.lerp_(g, 0.05)
                    u = zeropower(g.lerp(buf, 0.95))
                    p.add_(u, alpha=-lr * max(1.0, p.size(0) / p.size(1)) ** 0.5)
                else:
                    m = st.setdefault("m", torch.zeros_like(p))
                    v = st.setdefault("v", torch.zeros_like(p))
                    m.lerp_(g, 0.2)
                    v.mul_(0.95).addcmul_(g, g, value=0.05)
                    mh = m / (1 - 0.8 ** self.t)
                    vh = v / (1 - 0.95 ** self.t)
                    p.addcdiv_(mh, vh.sqrt().add_(1e-10), value=-lr)
                p.grad = None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--aspect", type=int, default=64)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--device-batch", type=int, default=16)
    ap.add_argument("--total-batch", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (PyTorch 2.x)")
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    if a.compile and not hasattr(torch, "compile"):
        sys.exit("py_model.py: --compile needs torch.compile (PyTorch >= 2.0); this python3 has torch %s at %s"
                 % (torch.__version__, torch.__file__))
    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit("py_model.py: --device cuda but torch %s sees no CUDA device (built with CUDA %s)"
                 % (torch.__version__, torch.version.cuda))
    if a.total_batch % (a.device_batch * a.context):
        sys.exit("py_model.py: --total-batch %d is not a multiple of --device-batch x --context (%d)"
                 % (a.total_batch, a.device_batch * a.context))
    dev = torch.device(a.device)
    torch.set_num_threads(a.threads)
    torch.manual_seed(1337)
    C = (a.depth * a.aspect + a.head_dim - 1) // a.head_dim * a.head_dim
    model = GPT(a.vocab, a.depth, C, C // a.head_dim, a.head_dim, a.context).to(dev)
    fwd = torch.compile(model) if a.compile else model
    opt = Optim(model, C=C)
    accum = a.total_batch // (a.device_batch * a.context)
    g = torch.Generator(device=dev).manual_seed(0)

    def batch():
        t = torch.randint(0, a.vocab, (a.device_batch, a.context + 1), generator=g, device=dev)
        d = torch.cumsum((torch.rand(a.device_batch, a.context, generator=g, device=dev) < 0.002).long(), 1)
        return t[:, :-1], t[:, 1:], d

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def step():
        for _ in range(accum):
            x, y, d = batch()
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.precision == "bf16"):
                loss = fwd(x, y, d)
            (loss / accum).backward()
        opt.step()
        sync()

    sync()
    t_warm = time.time()
    for _ in range(a.warmup):
        step()
    warm_s = time.time() - t_warm
    if a.profile:
        from torch.profiler import profile, ProfilerActivity
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        with profile(activities=acts) as prof:
            step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25), file=sys.stderr)
    times = []
    t0 = time.time()
    for _ in range(a.steps):
        ts = time.time()
        step()
        times.append(time.time() - ts)
    dt = time.time() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = {"impl": "python-compiled" if a.compile else "python", "torch": torch.__version__, "device": a.device,
           "precision": a.precision, "d_model": C, "depth": a.depth, "context": a.context, "vocab": a.vocab,
           "total_batch": a.total_batch, "steps": a.steps, "warmup": a.warmup,
           "tokens_per_second": a.steps * a.total_batch / dt, "step_ms": 1000 * dt / a.steps,
           "step_ms_median": 1000 * statistics.median(times), "step_ms_all": [round(1000 * t, 3) for t in times],
           "warmup_s": warm_s, "flops_per_token": flops_per_token(a.vocab, a.depth, C, a.context),
           "peak_rss_bytes": rss}
    if dev.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(dev)
        out["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(dev)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
