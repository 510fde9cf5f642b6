"""Runtime benchmark on this machine (part of `make bench`): a PatchCore and a PaDiM bundle at
256 x 256 on the embedded PIPED category, their INT8 variants, and `edge bench` over each
(model only, end to end through the pipeline, PyTorch eager baseline). Writes
bench-out/<method>.json and bench-out/<method>.png."""

import os
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DATA = os.path.join(ROOT, "data", "piped", "PA_BDP01_TL")
OUT = os.path.join(ROOT, "bench-out")


def edge(*args):
    print("$ edge " + " ".join(os.path.relpath(a, ROOT) if a.startswith(ROOT) else a for a in args), flush=True)
    subprocess.run([sys.executable, "-m", "edge.cli", *args], check=True, cwd=ROOT)


def main():
    os.makedirs(OUT, exist_ok=True)
    methods = sys.argv[1:] or ["patchcore", "padim"]
    for method in methods:
        bundle = os.path.join(OUT, method)
        edge("train", "--method", method, "--data", DATA, "--out", bundle, "--no-eval")
        edge("quantize", bundle, "--precision", "int8")
        edge("bench", bundle, "--precisions", "fp32,int8", "--batch", "1,4", "--seconds", "5",
             "--json", os.path.join(OUT, f"{method}.json"), "--plot", os.path.join(OUT, f"{method}.png"))


if __name__ == "__main__":
    main()
