"""PyTorch 1.13's dynamic int8 quantization of the 4 x Linear(1024, 1024) stack (run by
compare_quant.py in the environment of bench/harness.py): f32 and torch.ao.quantization.quantize_dynamic
latency at each batch size, for every quantized engine this torch build has."""
import argparse
import json
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--batch", default="1,64")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5, help="untimed runs first")
    args = ap.parse_args()
    import torch
    from torch import nn
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(1024, 1024) for _ in range(4)]).eval()

    def timed(m, x):
        with torch.no_grad():
            for _ in range(args.warmup):
                m(x)
            runs = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                m(x)
                runs.append(time.perf_counter() - t0)
        runs.sort()
        return runs[0] * 1e3, runs[len(runs) // 2] * 1e3

    batches = [int(b) for b in args.batch.split(",")]
    for b in batches:
        x = torch.randn(b, 1024)
        lo, med = timed(model, x)
        print(json.dumps({"engine": "-", "batch": b, "precision": "f32", "min_ms": lo, "median_ms": med}), flush=True)
    for engine in torch.backends.quantized.supported_engines:
        if engine == "none" or engine == "qnnpack":
            continue
        torch.backends.quantized.engine = engine
        q = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
        for b in batches:
            x = torch.randn(b, 1024)
            lo, med = timed(q, x)
            print(json.dumps({"engine": engine, "batch": b, "precision": "int8", "min_ms": lo,
                              "median_ms": med}), flush=True)


if __name__ == "__main__":
    main()
