"""The `cpu` preset trained in PyTorch: the reference for the validation loss `train gpt` reaches.

    /usr/bin/python3 bench/gpt_torch_train.py --data ../shared/data/tinyshakespeare.txt --seed 1337

nanoGPT's model.py and train.py for config/train_shakespeare_char.py with the README's CPU
overrides (block 64, batch 12, 4 layers, 4 heads, 128 wide, 2000 iterations decaying to 2000,
dropout 0, no biases), re-typed so it runs on Debian's torch 1.13 without nanoGPT: GPT-2
initialisation, AdamW (lr 1e-3, betas (0.9, 0.99), weight decay 0.1 on matrices), gradient
clipping at 1.0, 100 warm-up steps then cosine to 1e-4. nanoGPT's GELU is the erf form (`--gelu
none`); forge's is the tanh form (`--gelu tanh`). Prints the train and val loss over
`--eval-iters` batches every 250 steps, and a JSON line at the end. It re-starts itself in the
PyTorch environment of bench/harness.py (OpenMP OpenBLAS, core type, thread variables).
"""
import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.environ.get("TINYSHAKESPEARE"), required="TINYSHAKESPEARE" not in os.environ)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--gelu", choices=["none", "tanh"], default="none")
    ap.add_argument("--eval-iters", type=int, default=200)
    ap.add_argument("--max-iters", type=int, default=2000)
    args = ap.parse_args()
    if os.environ.get("OMP_NUM_THREADS") != str(args.threads) or "OPENBLAS_CORETYPE" not in os.environ:
        # The fair setup must be in the environment before numpy or torch load: start again in it.
        # (--data spelled out: the new environment has no $TINYSHAKESPEARE.)
        os.execve(harness.TORCH_PYTHON, [harness.TORCH_PYTHON] + sys.argv + ["--data", args.data],
                  harness.TorchSetup(args.threads).env())

    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    print(f"# reference: {harness.describe_torch('openmp')}, {args.threads} thread(s), env "
          f"{harness.format_env(harness.TorchSetup(args.threads).env())}; seed {args.seed}, gelu {args.gelu}, "
          f"eval_iters {args.eval_iters}")

    text = open(args.data, encoding="utf-8").read()
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text], dtype=torch.int64)
    n = int(0.9 * len(data))
    splits = {"train": data[:n], "val": data[n:]}
    L, H, C, T, B, V = 4, 4, 128, 64, 12, len(chars)
    steps, warmup, lr_max, lr_min = args.max_iters, 100, 1e-3, 1e-4

    def get_batch(split):
        d = splits[split]
        ix = torch.randint(len(d) - T, (B,))
        return torch.stack([d[i:i + T] for i in ix]), torch.stack([d[i + 1:i + 1 + T] for i in ix])

    class LayerNorm(nn.Module):  # nanoGPT's LayerNorm with bias=False
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(C))

        def forward(self, x):
            return F.layer_norm(x, self.weight.shape, self.weight, None, 1e-5)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = LayerNorm(), LayerNorm()
            self.c_attn = nn.Linear(C, 3 * C, bias=False)
            self.attn_proj = nn.Linear(C, C, bias=False)
            self.c_fc = nn.Linear(C, 4 * C, bias=False)
            self.mlp_proj = nn.Linear(4 * C, C, bias=False)
            self.register_buffer("mask", torch.tril(torch.ones(T, T)).view(1, 1, T, T))

        def forward(self, x):
            b, t, c = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
            q, k, v = [z.view(b, t, H, c // H).transpose(1, 2) for z in (q, k, v)]
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(c // H))
            att = att.masked_fill(self.mask[:, :, :t, :t] == 0, float("-inf"))
            y = (F.softmax(att, dim=-1) @ v).transpose(1, 2).contiguous().view(b, t, c)
            x = x + self.attn_proj(y)
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate=args.gelu))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(T, C)
            self.h = nn.ModuleList([Block() for _ in range(L)])
            self.ln_f = LayerNorm()
            self.head = nn.Linear(C, V, bias=False)
            self.wte.weight = self.head.weight
            for m in self.modules():
                if isinstance(m, (nn.Linear, nn.Embedding)):
                    nn.init.normal_(m.weight, 0.0, 0.02)
            for name, p in self.named_parameters():
                if name.endswith("attn_proj.weight") or name.endswith("mlp_proj.weight"):
                    nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * L))

        def forward(self, idx, targets):
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
            for block in self.h:
                x = block(x)
            return F.cross_entropy(self.head(self.ln_f(x)).view(-1, V), targets.view(-1))

    model = GPT()
    params = list(model.parameters())
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                            lr=lr_max, betas=(0.9, 0.99))

    def get_lr(it):  # nanoGPT's
        if it < warmup:
            return lr_max * (it + 1) / (warmup + 1)
        if it > steps:
            return lr_min
        ratio = (it - warmup) / (steps - warmup)
        return lr_min + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr_max - lr_min)

    @torch.no_grad()
    def estimate():
        model.eval()
        out = {s: float(np.mean([model(*get_batch(s)).item() for _ in range(args.eval_iters)]))
               for s in ("train", "val")}
        model.train()
        return out

    for it in range(steps + 1):
        if it % 250 == 0 or it == steps:
            losses = estimate()
            print(f"step {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}", flush=True)
        if it == steps:
            break
        for g in opt.param_groups:
            g["lr"] = get_lr(it)
        loss = model(*get_batch("train"))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    print(json.dumps({"impl": "torch", "seed": args.seed, "gelu": args.gelu, "val_loss": losses["val"],
                      "train_loss": losses["train"]}))


if __name__ == "__main__":
    main()
