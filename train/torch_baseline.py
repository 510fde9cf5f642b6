"""The PyTorch eager baseline for `edge bench`: the bundle's model run by PyTorch on the CPU
(or CUDA where present), timed the same way as the engines. Run as a child process so that
`edge` itself never imports torch:

    python -m train.torch_baseline BUNDLE --batch 1 --seconds 5   -> one JSON line"""

import argparse
import json
import os
import resource
import sys

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()
    import torch
    from edge.bundle.manifest import Bundle
    from edge.common.errors import EdgeError
    from edge.common.fsutil import sha256_file
    from edge.tools.bench import time_engine
    bundle = Bundle(args.bundle)
    info = bundle.manifest.get("torch_model")
    if not info:
        raise EdgeError("bundle has no PyTorch model (trained before torch_model was recorded)", args.bundle)
    path = os.path.join(bundle.path, info["file"])
    if not os.path.isfile(path) or sha256_file(path) != info["sha256"]:
        raise EdgeError("PyTorch model missing or altered", path)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = torch.jit.load(path, map_location=device).eval()

    class Eager:
        name = f"pytorch-{device}"

        def infer(self, frames):
            with torch.inference_mode():
                m, s = model(torch.from_numpy(frames).to(device))
                return m.cpu().numpy(), s.cpu().numpy()

    h, w = bundle.input_hw
    frames = np.random.default_rng(0).integers(0, 255, (args.batch, h, w, 3), dtype=np.uint8)
    res = time_engine(Eager(), frames, args.seconds)
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res["engine"] = Eager.name
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
