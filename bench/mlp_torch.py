"""One epoch of the Fashion-MNIST MLP (784-256-256-10, ReLU, batch 128, AdamW lr 1e-3) in PyTorch.

The reference for bench/compare_mlp.py, which runs it under Debian's /usr/bin/python3 in the
environment of bench/harness.py (OpenBLAS build, OPENBLAS_CORETYPE, thread variables set before
import). `--foreach` runs AdamW's multi-tensor implementation instead of its per-tensor loop (torch
1.13's default); `--warmup N` first trains a throwaway copy of the model for N steps (untimed).
Prints one line of JSON per epoch: {"epoch", "epoch_s", "train_loss", "test_acc"}.
"""
import argparse
import copy
import gzip
import json
import sys
import time

import numpy as np


def read_idx(path, magic):
    with gzip.open(path, "rb") as f:
        data = f.read()
    got = int.from_bytes(data[0:4], "big")
    if got != magic:
        sys.exit(f"{path}: wrong magic {got:#x}")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=0, help="untimed training steps first")
    ap.add_argument("--foreach", action="store_true", help="AdamW(foreach=True)")
    args = ap.parse_args()

    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    d = args.data
    xtr = torch.from_numpy(read_idx(f"{d}/train-images-idx3-ubyte.gz", 0x803).reshape(-1, 784).astype(np.float32) / 255.0)
    ytr = torch.from_numpy(read_idx(f"{d}/train-labels-idx1-ubyte.gz", 0x801).astype(np.int64))
    xte = torch.from_numpy(read_idx(f"{d}/t10k-images-idx3-ubyte.gz", 0x803).reshape(-1, 784).astype(np.float32) / 255.0)
    yte = torch.from_numpy(read_idx(f"{d}/t10k-labels-idx1-ubyte.gz", 0x801).astype(np.int64))

    # Standardised pixels, as forge's recipe does (torchvision's Normalize for Fashion-MNIST).
    mu = xtr.mean().item()
    sd = ((xtr - mu) ** 2).mean().sqrt().item()
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    n, bs = xtr.shape[0], 128

    def train_step(m, o, idx):
        loss = F.cross_entropy(m(xtr[idx]), ytr[idx])
        o.zero_grad(set_to_none=True)
        loss.backward()
        o.step()
        return loss.item()

    # Warm-up on a copy, on the first batches in order: the timed run keeps the seed's weights and
    # shuffles.
    spare = copy.deepcopy(model)
    spare_opt = torch.optim.AdamW(spare.parameters(), lr=1e-3, foreach=args.foreach)
    for s in range(args.warmup):
        train_step(spare, spare_opt, torch.arange(s * bs, (s + 1) * bs) % n)
    del spare, spare_opt

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=args.foreach)
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        perm = torch.randperm(n)
        total = 0.0
        steps = 0
        for at in range(0, n, bs):
            total += train_step(model, opt, perm[at:at + bs])
            steps += 1
        epoch_s = time.perf_counter() - t0
        with torch.no_grad():
            acc = (model(xte).argmax(1) == yte).float().mean().item()
        print(json.dumps({"epoch": epoch, "epoch_s": epoch_s, "train_loss": total / steps, "test_acc": acc,
                          "foreach": args.foreach, "warmup": args.warmup}), flush=True)


if __name__ == "__main__":
    main()
