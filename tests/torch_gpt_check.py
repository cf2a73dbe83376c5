#!/usr/bin/python3
"""Cross-checks forge's GPT against an independent PyTorch implementation.

Usage: torch_gpt_check.py DUMP_DIR   (DUMP_DIR written by tests/gpt_torch_dump)

For each case directory (bias, nobias, erf) it reads forge's safetensors files with the small
reader below (struct + json + numpy: no safetensors package, so this also shows the files are
readable by another reader), builds the same GPT in PyTorch (nanoGPT's layout: pre-LayerNorm
blocks, causal attention, the case's GELU form (tanh approximation or exact erf), LayerNorm eps
1e-5, head tied to transformer.wte.weight), loads forge's initial weights and compares, in f32:
  - logits, loss and every parameter's gradient: max|forge - torch| / max|torch| <= GRAD_TOL;
  - the losses and gradient norms of the AdamW steps (torch.optim.AdamW with the settings in the
    dump's metadata, gradients clipped with clip_grad_norm_, weight decay on tensors of 2+ dims
    only): the same number of steps, |forge - torch| / |torch| <= LOSS_TOL at every step;
  - each parameter's update over those steps (final - initial weights), so that the comparison
    is not swamped by the weights themselves: max|forge - torch| / max|torch| <= UPDATE_TOL and
    ||forge - torch|| / ||torch|| <= UPDATE_L2_TOL.
    The dump's weight decay is large enough that the decay's share of the update is far above
    that tolerance: a torch run without decay (or with decay on every tensor) must miss the
    reference by more than POWER x UPDATE_L2_TOL (every matrix without decay, every LayerNorm gain
    with it), or the check could not see a missing or misapplied decay and fails as too weak.
    Likewise the other GELU form must move the logits by more than POWER x GRAD_TOL, or the
    check could not tell which form forge ran.
Prints a table of relative errors; exits 1 on any failure, 77 (meson's skip) without torch, or 1
when torch is missing and FORGE_REQUIRE_OPTIONAL=1.
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
    why = f"cannot import torch/numpy with {sys.executable}: {e}"
    if os.environ.get("FORGE_REQUIRE_OPTIONAL") == "1":
        print(f"FAIL: FORGE_REQUIRE_OPTIONAL=1 and {why}")
        sys.exit(1)
    print(f"SKIPPED: {why}")
    sys.exit(77)

# Measured worst (torch 1.13; random and corpus batches): gradients and losses ~1e-6; updates 7e-4
# in the largest element, 1e-4 over a whole tensor (AdamW divides by sqrt(v), which amplifies
# rounding where a gradient is near zero: the key bias, whose exact gradient is 0).
GRAD_TOL = 1e-5
LOSS_TOL = 1e-5
UPDATE_TOL = 3e-3
UPDATE_L2_TOL = 5e-4
POWER = 10  # a mistake the check must see moves the result by more than POWER x its tolerance

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

        self.gelu = "none" if c.get("gelu", "tanh") == "erf" else "tanh"

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate=self.gelu))


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

def adamw_run(model, params, weights, x, y, adamw, decay_on):
    """The dump's AdamW steps from the initial weights, weight decay on "matrices" (nanoGPT's
    groups, what forge does), "none" or "all"; returns the losses, norms and final weights."""
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(torch.from_numpy(weights[n]))
    wd = adamw["weight_decay"]
    groups = [{"params": [p for p in params.values() if p.dim() >= 2],
               "weight_decay": 0.0 if decay_on == "none" else wd},
              {"params": [p for p in params.values() if p.dim() < 2],
               "weight_decay": wd if decay_on == "all" else 0.0}]
    opt = torch.optim.AdamW(groups, lr=adamw["lr"], betas=(adamw["beta1"], adamw["beta2"]),
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
    final = {n: p.detach().numpy().astype(np.float64) for n, p in params.items()}
    return losses, norms, final


def rel_err(ours, ref):
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, f"shape {ours.shape} != {ref.shape}"
    scale = np.max(np.abs(ref))
    return float(np.max(np.abs(ours - ref)) / scale) if scale > 0 else float(np.max(np.abs(ours)))


def rel_l2(ours, ref):
    """||ours - ref|| / ||ref||: the size of a difference spread over a whole tensor."""
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, f"shape {ours.shape} != {ref.shape}"
    scale = np.linalg.norm(ref)
    return float(np.linalg.norm(ours - ref) / scale) if scale > 0 else float(np.linalg.norm(ours))


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
    other_gelu = GPT(dict(config, gelu="tanh" if config.get("gelu", "tanh") == "erf" else "erf"))
    other_gelu.load_state_dict(model.state_dict())
    with torch.no_grad():
        moved = rel_err(other_gelu(x, y)[0].numpy(), logits.detach().numpy())
    rows.append((name, "(power) the other GELU form: logits moved", moved, POWER * GRAD_TOL,
                 moved > POWER * GRAD_TOL))
    row("loss", rel_err(ref["loss"], loss.detach().numpy().reshape(1)), GRAD_TOL)
    for n, p in params.items():
        row("grad." + n, rel_err(ref["grad." + n], p.grad.numpy()), GRAD_TOL)

    # AdamW from the initial weights: as the dump did, then with the decay left out and with it
    # applied to every tensor (the mistakes the update check must be able to see).
    losses, norms, final = adamw_run(model, params, weights, x, y, adamw, "matrices")
    if not len(after["losses"]) == len(after["grad_norms"]) == len(losses) == adamw["steps"]:
        raise SystemExit(f"FAIL {name}: forge logged {len(after['losses'])} losses and "
                         f"{len(after['grad_norms'])} norms, torch ran {len(losses)} of "
                         f"{adamw['steps']} steps")
    for i, (ours, theirs) in enumerate(zip(after["losses"], losses)):
        row(f"adamw loss step {i + 1}", abs(ours - theirs) / abs(theirs), LOSS_TOL)
    for i, (ours, theirs) in enumerate(zip(after["grad_norms"], norms)):
        row(f"adamw grad norm step {i + 1}", abs(ours - theirs) / abs(theirs), LOSS_TOL)
    for n in params:
        ours, theirs = after["final." + n].astype(np.float64) - weights[n], final[n] - weights[n]
        row("adamw update." + n, rel_err(ours, theirs), UPDATE_TOL)
        row("adamw update (l2)." + n, rel_l2(ours, theirs), UPDATE_L2_TOL)
    # The check's power: the mistakes it must see move the updates by more than POWER x its
    # tolerance. No decay: every matrix's update; decay on every tensor: the LayerNorm gains'.
    for wrong, which in (("none", lambda n: params[n].dim() >= 2),
                         ("all", lambda n: ".ln_" in n and n.endswith(".weight"))):
        _, _, other = adamw_run(model, params, weights, x, y, adamw, wrong)
        least = min(rel_l2(other[n] - weights[n], final[n] - weights[n]) for n in params if which(n))
        rows.append((name, f"(power) decay on {wrong}: least moved update (l2)", least,
                     POWER * UPDATE_L2_TOL, least > POWER * UPDATE_L2_TOL))
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
        bound = ">" if tensor.startswith("(power)") else "<="
        print(f"{case:7s} {tensor:50s} {err:10.2e} {bound:>2s}{tol:7.0e}{'' if ok else '  FAIL'}")
    failed = [r for r in rows if not r[4]]
    worst = max((r for r in rows if not r[1].startswith("(power)")), key=lambda r: r[2] / r[3])
    print(f"{len(rows)} comparisons, {len(failed)} failed; worst {worst[0]} {worst[1]} "
          f"{worst[2]:.2e} (tol {worst[3]:.0e})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
