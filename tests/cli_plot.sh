#!/usr/bin/env bash
# tools/plot: two small `train gpt` runs drawn into one SVG and one PNG. The SVG must parse as XML
# and hold every chart's series with the runs' labels; the PNG must be a whole image (signature,
# chunk CRCs, IHDR size, pixel data of that size) in which both runs' colours appear. Bad input
# (a missing file, a file without step records, an unknown extension) fails with a message.
# Usage: cli_plot.sh path/to/train path/to/tools/plot
set -u

train=${1:?usage: cli_plot.sh path/to/train path/to/plot}
plot=${2:?usage: cli_plot.sh path/to/train path/to/plot}
. "$(dirname "$0")/cli_lib.sh"
command -v gnuplot >/dev/null || skip_missing "gnuplot (Debian: gnuplot-nox)"

corpus=$(test_corpus)
tiny=(--data "$corpus" --n-layer 1 --n-head 2 --n-embd 16 --block-size 16 --batch-size 4
  --eval-interval 10 --eval-iters 2 --threads 1 --max-iters 30)
for lr in 1e-3 3e-3; do
  run "$train" gpt "${tiny[@]}" --lr $lr --out "$tmp/run$lr" --metrics "$tmp/lr$lr.jsonl"
  [ "$rc" -eq 0 ] || { fail "train --lr $lr exited $rc"; show; finish cli_plot; }
done

run "$plot" "$tmp/lr1e-3.jsonl" "$tmp/lr3e-3.jsonl" --label "lr 1e-3" --label "lr 3e-3" -o "$tmp/runs.svg"
[ "$rc" -eq 0 ] || { fail "plot to SVG exited $rc"; show; }
python3 - "$tmp/runs.svg" <<'PY' || fail "the SVG (above)"
import re, sys
import xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
problems = []
if not root.tag.endswith("svg"):
    problems.append(f"root element {root.tag}, expected svg")
ids = [g.get("id") for g in root.iter() if (g.get("id") or "").startswith("gnuplot_plot_")]
# gnuplot names a multiplot's series gnuplot_plot_<series><chart>: a, b, c for the three charts.
# (the key entry of a series is a second group of the same id).
per_chart = {c: sorted({int(re.fullmatch(r"gnuplot_plot_(\d+)[abc]", i).group(1)) for i in ids
                        if i.endswith(c)}) for c in "abc"}
want = {"a": [1, 2, 3, 4], "b": [1, 2, 3, 4], "c": [1, 2]}  # train + val per run; tokens/s per run
if per_chart != want:
    problems.append(f"series per chart {per_chart}, expected {want}")
texts = {"".join(t.itertext()).strip() for t in root.iter() if t.tag.endswith("text")}
for label in ("lr 1e-3 train", "lr 1e-3 val", "lr 3e-3 train", "lr 3e-3 val", "lr 1e-3", "lr 3e-3"):
    if label not in texts:
        problems.append(f"no key entry '{label}'")
for p in problems:
    print("  " + p)
sys.exit(1 if problems else 0)
PY

run "$plot" "$tmp/lr1e-3.jsonl" "$tmp/lr3e-3.jsonl" -o "$tmp/runs.png"
[ "$rc" -eq 0 ] || { fail "plot to PNG exited $rc"; show; }
grep -q "lr1e-3 (30 steps), lr3e-3 (30 steps)" "$tmp/out" || { fail "plot: no summary naming both runs (labels from the file names)"; show; }
python3 - "$tmp/runs.png" <<'PY' || fail "the PNG (above)"
import struct, sys, zlib
data = open(sys.argv[1], "rb").read()
def die(message):
    print("  " + message)
    sys.exit(1)
if data[:8] != b"\x89PNG\r\n\x1a\n":
    die("no PNG signature")
pos, chunks = 8, []
while pos < len(data):
    length, kind = struct.unpack(">I4s", data[pos:pos + 8])
    body = data[pos + 8:pos + 8 + length]
    (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
    if zlib.crc32(kind + body) != crc:
        die(f"bad CRC in chunk {kind!r}")
    chunks.append((kind, body))
    pos += 12 + length
if chunks[0][0] != b"IHDR" or chunks[-1][0] != b"IEND":
    die("chunks do not run from IHDR to IEND")
width, height, depth, color = struct.unpack(">IIBB", chunks[0][1][:10])
channels = {2: 3, 6: 4}.get(color)
if depth != 8 or channels is None or (width, height) != (900, 1100):
    die(f"IHDR {width}x{height}, depth {depth}, colour type {color}: expected 900x1100 8-bit RGB(A)")
raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
stride = width * channels
if len(raw) != height * (stride + 1):
    die(f"{len(raw)} bytes of pixel data, expected {height * (stride + 1)}")
# Undo the row filters, then look for the two runs' line colours (gnuplot's line types 1 and 2).
prev, colours = bytearray(stride), set()
for y in range(height):
    f, row = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
    for i in range(stride):
        a = row[i - channels] if i >= channels else 0
        b, c = prev[i], prev[i - channels] if i >= channels else 0
        if f == 1: row[i] = (row[i] + a) & 255
        elif f == 2: row[i] = (row[i] + b) & 255
        elif f == 3: row[i] = (row[i] + (a + b) // 2) & 255
        elif f == 4:
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            row[i] = (row[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    colours.update(bytes(row[x:x + 3]) for x in range(0, stride, channels))
    prev = row
for name, rgb in (("run 1 (purple, 148,0,211)", b"\x94\x00\xd3"), ("run 2 (green, 0,158,115)", b"\x00\x9e\x73")):
    if rgb not in colours:
        die(f"no pixel of {name}")
print(f"  PNG {width}x{height}, {len(colours)} colours, both runs drawn")
PY

# Two runs appended to one file (the same --metrics twice): two separate lines, not one drawn back
# from the last step to the first.
cat "$tmp/lr1e-3.jsonl" "$tmp/lr3e-3.jsonl" >"$tmp/appended.jsonl"
run "$plot" "$tmp/appended.jsonl" -o "$tmp/appended.svg"
[ "$rc" -eq 0 ] || { fail "plot of an appended file exited $rc"; show; }
python3 - "$tmp/appended.svg" <<'PY' || fail "the appended runs were not drawn as two lines"
import sys
import xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
group = next(g for g in root.iter() if g.get("id") == "gnuplot_plot_1a")
data = max((p.get("d") for p in group.iter() if p.tag.endswith("path")), key=len)
print(f"  train-loss path of the appended file: {data.count('M')} pieces")
sys.exit(0 if data.count("M") == 2 else 1)
PY

run "$plot" "$tmp/no-such.jsonl" -o "$tmp/x.svg"
expect_error "plot of a missing file" "no-such.jsonl" "No such file"
echo '{"epoch": 1, "train_loss": 0.5}' >"$tmp/mnist.jsonl"
run "$plot" "$tmp/mnist.jsonl" -o "$tmp/x.svg"
expect_error "plot of a file without step records" "mnist.jsonl" "no step records"
run "$plot" "$tmp/lr1e-3.jsonl" -o "$tmp/x.jpg"
expect_error "plot to .jpg" "x.jpg" ".svg or .png"
[ ! -e "$tmp/x.svg" ] && [ ! -e "$tmp/x.jpg" ] || fail "a refused plot left an image behind"

finish cli_plot
