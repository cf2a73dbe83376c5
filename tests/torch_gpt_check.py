#!/usr/bin/python3
"""Cross-checks forge's GPT against an independent PyTorch implementation.

Usage: torch_gpt_check.py DUMP_DIR   (DUMP_DIR written by tests/gpt_torch_dump)

For each case directory (bias, nobias) it reads forge's safetensors files with the small reader
below (struct + json + numpy: no safetensors package, so this also shows the files are readable by
another reader), builds the same GPT in PyTorch (nanoGPT's layout: pre-LayerNorm blocks, causal
attention, GELU approximate='tanh', LayerNorm eps 1e-5, head tied to transformer.wte.weight),
loads forge's initial weights and compares, in f32:
  - logits, loss and every parameter's gradient: max|forge - torch| / max|torch| <= 1e-4;
  - the losses and gradient norms of 10 steps of torch.optim.AdamW (the settings in the dump's
    metadata, gradients clipped with clip_grad_norm_, weight decay on tensors of 2+ dims only):
    |forge - torch| / |torch| <= 1e-4 at every step;
  - the weights after those steps: max|forge - torch| / max|torch| <= 1e-3 (looser: ten Adam
    updates of size ~lr divide by sqrt(v), which amplifies the gradients' rounding differences).
Prints a table of relative errors; exits 1 on any failure, 77 (meson's skip) without torch.
"""
import json
import os
import struct
import sys
import zlib

try:
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError as e:
    print(f"SKIPPED: cannot import torch/numpy with {sys.executable}: {e}")
    sys.exit(77)

GRAD_TOL = 1e-4
LOSS_TOL = 1e-4
WEIGHT_TOL = 1e-3

DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32,
          "U8": np.uint8, "I8": np.int8, "F16": np.float16}


def read_safetensors(path):
    """Returns ({name: ndarray}, metadata). Checks the layout and forge's CRC-32 entries."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    data = raw[8 + n:]
    metadata = header.pop("__metadata__", {})
    tensors, end = {}, 0
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        begin, stop = info["data_offsets"]
        assert begin == end, f"{path}: {name} starts at {begin}, expected {end}"
        dtype = np.dtype(DTYPES[info["dtype"]]).newbyteorder("<")
        arr = np.frombuffer(data[begin:stop], dtype=dtype).reshape(info["shape"])
        crc = metadata.get("crc32:" + name)
        if crc is not None:
            got = f"{zlib.crc32(data[begin:stop]) & 0xffffffff:08x}"
            assert got == crc, f"{path}: {name}: crc32 {got} != stored {crc}"
        tensors[name] = arr.copy()
        end = stop
    assert end == len(data), f"{path}: {len(data) - end} bytes after the last tensor"
    return tensors, {k: v for k, v in metadata.items() if not k.startswith("crc32:")}


# ---- The model, written from nanoGPT's model.py ----

class LayerNorm(nn.Module):
    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.n_head, self.n_embd = c["n_head"], c["n_embd"]
        self.c_attn = nn.Linear(c["n_embd"], 3 * c["n_embd"], bias=c["bias"])
        self.c_proj = nn.Linear(c["n_embd"], c["n_embd"], bias=c["bias"])
        T = c["block_size"]
        self.register_buffer("mask", torch.tril(torch.ones(T, T)).view(1, 1, T, T))

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        hs = C // self.n_head
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / hs ** 0.5)
        att = att.masked_fill(self.mask[:, :, :T, :T] == 0, float("-inf"))
        att = F.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c_fc = nn.Linear(c["n_embd"], 4 * c["n_embd"], bias=c["bias"])
        self.c_proj = nn.Linear(4 * c["n_embd"], c["n_embd"], bias=c["bias"])

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.ln_1 = LayerNorm(c["n_embd"], c["bias"])
        self.attn = CausalSelfAttention(c)
        self.ln_2 = LayerNorm(c["n_embd"], c["bias"])
        self.mlp = MLP(c)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(c["vocab_size"], c["n_embd"]),
            wpe=nn.Embedding(c["block_size"], c["n_embd"]),
            h=nn.ModuleList([Block(c) for _ in range(c["n_layer"])]),
            ln_f=LayerNorm(c["n_embd"], c["bias"])))
        self.lm_head = nn.Linear(c["n_embd"], c["vocab_size"], bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied

    def forward(self, idx, targets):
        T = idx.size(1)
        pos = torch.arange(0, T, dtype=torch.long)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss


# ---- The comparison ----

def rel_err(ours, ref):
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, f"shape {ours.shape} != {ref.shape}"
    scale = np.max(np.abs(ref))
    return float(np.max(np.abs(ours - ref)) / scale) if scale > 0 else float(np.max(np.abs(ours)))


def check_case(case_dir, rows):
    name = os.path.basename(case_dir)
    weights, meta = read_safetensors(os.path.join(case_dir, "model.safetensors"))
    batch, _ = read_safetensors(os.path.join(case_dir, "batch.safetensors"))
    ref, _ = read_safetensors(os.path.join(case_dir, "reference.safetensors"))
    after, after_meta = read_safetensors(os.path.join(case_dir, "adamw.safetensors"))
    config = json.loads(meta["config"])
    adamw = json.loads(after_meta["adamw"])

    def row(tensor, err, tol):
        rows.append((name, tensor, err, tol, err <= tol))

    model = GPT(config)
    params = dict(model.named_parameters())  # the tied head appears once, as transformer.wte.weight
    if set(params) != set(weights):
        raise SystemExit(f"FAIL {name}: parameter names differ: only in forge "
                         f"{sorted(set(weights) - set(params))}, only in torch "
                         f"{sorted(set(params) - set(weights))}")
    with torch.no_grad():
        for n, p in params.items():
            assert tuple(p.shape) == weights[n].shape, f"{n}: {tuple(p.shape)} vs {weights[n].shape}"
            p.copy_(torch.from_numpy(weights[n]))
    x = torch.from_numpy(batch["x"])
    y = torch.from_numpy(batch["y"])

    logits, loss = model(x, y)
    model.zero_grad()
    loss.backward()
    row("logits", rel_err(ref["logits"], logits.detach().numpy()), GRAD_TOL)
    row("loss", rel_err(ref["loss"], loss.detach().numpy().reshape(1)), GRAD_TOL)
    for n, p in params.items():
        row("grad." + n, rel_err(ref["grad." + n], p.grad.numpy()), GRAD_TOL)

    decay = [p for p in params.values() if p.dim() >= 2]
    no_decay = [p for p in params.values() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": adamw["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=adamw["lr"], betas=(adamw["beta1"], adamw["beta2"]),
                            eps=adamw["eps"])
    losses, norms = [], []
    for _ in range(adamw["steps"]):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        losses.append(loss.item())
        norms.append(float(torch.nn.utils.clip_grad_norm_(list(params.values()),
                                                           adamw["grad_clip"])))
        opt.step()
    for i, (ours, theirs) in enumerate(zip(after["losses"], losses)):
        row(f"adamw loss step {i + 1}", abs(ours - theirs) / abs(theirs), LOSS_TOL)
    for i, (ours, theirs) in enumerate(zip(after["grad_norms"], norms)):
        row(f"adamw grad norm step {i + 1}", abs(ours - theirs) / abs(theirs), LOSS_TOL)
    for n, p in params.items():
        row("adamw final." + n, rel_err(after["final." + n], p.detach().numpy()), WEIGHT_TOL)
    print(f"{name}: config {meta['config']}; loss forge {float(ref['loss'][0]):.6f} "
          f"torch {losses[0]:.6f}; after {adamw['steps']} AdamW steps forge "
          f"{after['losses'][-1]:.6f} torch {losses[-1]:.6f}")


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    torch.set_num_threads(1)
    rows = []
    cases = sorted(d for d in os.listdir(sys.argv[1])
                   if os.path.isdir(os.path.join(sys.argv[1], d)))
    if not cases:
        print(f"FAIL: no case directories in {sys.argv[1]}")
        return 1
    for case in cases:
        check_case(os.path.join(sys.argv[1], case), rows)
    print(f"torch {torch.__version__}, numpy {np.__version__}")
    print(f"{'case':7s} {'tensor':50s} {'rel err':>10s} {'tol':>7s}")
    for case, tensor, err, tol, ok in rows:
        print(f"{case:7s} {tensor:50s} {err:10.2e} {tol:7.0e}{'' if ok else '  FAIL'}")
    failed = [r for r in rows if not r[4]]
    worst = max(rows, key=lambda r: r[2] / r[3])
    print(f"{len(rows)} comparisons, {len(failed)} failed; worst {worst[0]} {worst[1]} "
          f"{worst[2]:.2e} (tol {worst[3]:.0e})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
