"""torch.matmul throughput at the shapes of bench/matmul.cpp, f32 or bf16 (run by compare_matmul.py)."""
import argparse
import json
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=1, help="untimed products per shape")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    args = ap.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    cases = [(256, 256, 256), (512, 512, 512), (1024, 1024, 1024), (2048, 2048, 2048),
             (128, 768, 512), (512, 768, 128), (128, 3072, 768), (128, 50257, 768)]
    for m, n, k in cases:
        dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
        a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
        flop = 2.0 * m * n * k
        inner = max(1, int(2e9 / flop))
        for _ in range(args.warmup):
            torch.matmul(a, b)
        runs = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for _ in range(inner):
                torch.matmul(a, b)
            runs.append((time.perf_counter() - t0) / inner)
        runs.sort()
        print(json.dumps({"impl": "torch", "m": m, "n": n, "k": k, "min_s": runs[0],
                          "median_s": runs[len(runs) // 2], "gflops": flop / runs[0] * 1e-9}), flush=True)


if __name__ == "__main__":
    main()
