"""GPT training-step time in PyTorch, the reference of bench/compare_gpt.py.

The model is nanoGPT's (model.py) as it runs on torch 1.13 (no scaled_dot_product_attention:
explicit masked softmax) and no biases, as forge's; GELU in its tanh form (forge's default) or, with
`--gelu erf`, the exact form (nanoGPT's nn.GELU()). The optimizer is nanoGPT's
configure_optimizers on a CPU (AdamW, weight decay on 2-d tensors), plus clip_grad_norm_(1.0);
`--foreach` runs AdamW's multi-tensor implementation instead of its per-tensor loop (torch 1.13's
default). Random tokens, like bench/gpt_step.cpp. `--precision bf16` runs forward and loss under
torch.autocast("cpu", dtype=torch.bfloat16) (torch 1.13's CPU autocast has no f16).
Prints one JSON line.
"""
import argparse
import json
import math
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=["cpu", "gpt2-small", "baby"], default="cpu")
    ap.add_argument("--precision", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--gelu", choices=["tanh", "erf"], default="tanh")
    ap.add_argument("--foreach", action="store_true", help="AdamW(foreach=True)")
    args = ap.parse_args()

    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    torch.set_num_threads(args.threads)
    torch.manual_seed(1337)

    if args.shape == "cpu":
        L, H, C, V, T, B = 4, 4, 128, 65, 64, 12
    elif args.shape == "gpt2-small":
        L, H, C, V, T, B = 12, 12, 768, 50257, 64, 4
    else:
        L, H, C, V, T, B = 6, 6, 384, 65, 256, 64

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_attn = nn.Linear(C, 3 * C, bias=False)
            self.c_proj = nn.Linear(C, C, bias=False)
            self.register_buffer("mask", torch.tril(torch.ones(T, T)).view(1, 1, T, T))

        def forward(self, x):
            b, t, c = x.size()
            q, k, v = self.c_attn(x).split(C, dim=2)
            q = q.view(b, t, H, c // H).transpose(1, 2)
            k = k.view(b, t, H, c // H).transpose(1, 2)
            v = v.view(b, t, H, c // H).transpose(1, 2)
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            att = att.masked_fill(self.mask[:, :, :t, :t] == 0, float("-inf"))
            att = F.softmax(att, dim=-1)
            y = (att @ v).transpose(1, 2).contiguous().view(b, t, c)
            return self.c_proj(y)

    approximate = {"tanh": "tanh", "erf": "none"}[args.gelu]

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = nn.LayerNorm(C, elementwise_affine=True)
            self.ln_1.bias = None
            self.attn = Attention()
            self.ln_2 = nn.LayerNorm(C)
            self.ln_2.bias = None
            self.c_fc = nn.Linear(C, 4 * C, bias=False)
            self.c_proj = nn.Linear(4 * C, C, bias=False)

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.c_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate=approximate))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(V, C)
            self.wpe = nn.Embedding(T, C)
            self.h = nn.ModuleList([Block() for _ in range(L)])
            self.ln_f = nn.LayerNorm(C)
            self.ln_f.bias = None
            self.lm_head = nn.Linear(C, V, bias=False)
            self.lm_head.weight = self.wte.weight

        def forward(self, idx, targets):
            pos = torch.arange(idx.size(1))
            x = self.wte(idx) + self.wpe(pos)
            for blk in self.h:
                x = blk(x)
            logits = self.lm_head(self.ln_f(x))
            return F.cross_entropy(logits.view(-1, V), targets.view(-1))

    model = GPT()
    # nanoGPT's _init_weights (GPT-2's): N(0, 0.02) matrices and embeddings, as forge initialises;
    # PyTorch's defaults (N(0, 1) embeddings, tied to the head) start at a loss of ~70.
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.99), foreach=args.foreach)

    def step():
        x = torch.randint(V, (B, T))
        y = torch.randint(V, (B, T))
        if args.precision == "bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(x, y)
        else:
            loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
    times.sort()
    med = times[len(times) // 2] if len(times) % 2 else 0.5 * (times[len(times) // 2 - 1] + times[len(times) // 2])
    print(json.dumps({"impl": "torch", "shape": args.shape, "precision": args.precision,
                      "gelu": args.gelu, "foreach": args.foreach, "threads": args.threads,
                      "warmup": args.warmup, "steps": args.steps,
                      "min_ms": times[0] * 1e3, "median_ms": med * 1e3, "tokens_per_s": B * T / med,
                      "loss": loss}), flush=True)


if __name__ == "__main__":
    main()
