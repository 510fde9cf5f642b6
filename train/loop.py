"""One training loop for every method (the protocol is in train/methods/__init__.py).

statistics (no gradients) -> epochs of training_step (seeded, AMP on CUDA, progress with the
loss, a checkpoint after each epoch, early stopping on the held-out good images) ->
calibration (no gradients). Ctrl-C keeps the last checkpoint; the same command resumes from it."""

import hashlib
import json
import math
import os
import shutil
import time

import numpy as np
import torch

from edge.common.errors import EdgeError
from edge.common.progress import say


def resolve_device(name):
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise EdgeError("no CUDA device here (PyTorch sees none)", "--device")
    return name


def batches_of(graph, images, batch, device, order=None):
    """A callable yielding normalised batches (N x 3 x H x W float on `device`)."""
    def gen():
        idx = np.arange(len(images)) if order is None else order
        for i in range(0, len(idx), batch):
            frames = torch.from_numpy(images[np.sort(idx[i:i + batch])]).to(device)
            with torch.no_grad():
                yield graph.normalise(frames)
    return gen


class Checkpoint:
    """The training state after each epoch, in `<out>.train-state/`, kept until the bundle is
    written; used only when the settings' digest matches."""

    def __init__(self, out, key):
        self.dir = os.path.abspath(out).rstrip("/") + ".train-state"
        self.path = os.path.join(self.dir, "last.pt")
        self.key = key

    def load(self):
        if not os.path.isfile(self.path):
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception:
            return None
        return state if state.get("key") == self.key else None

    def save(self, state):
        os.makedirs(self.dir, exist_ok=True)
        tmp = self.path + ".tmp"
        torch.save({**state, "key": self.key}, tmp)
        os.replace(tmp, self.path)

    def clear(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def settings_key(settings, extra=None):
    d = {k: v for k, v in vars(settings).items() if k not in ("out", "evaluate", "threads", "device")}
    return hashlib.sha256(json.dumps([d, extra], sort_keys=True, default=str).encode()).hexdigest()


def train_method(method, graph, fit_imgs, hold_imgs, settings, device, log=say, features=None):
    """Runs every stage the method defines; returns a record for the manifest. `features`: the
    frozen features of `fit_imgs` already computed (fold scoring), for `fit_features`."""
    torch.manual_seed(settings.seed)
    scorer = graph.scorer
    graph.to(device)
    bs = settings.batch_size or method.batch_size
    record = {"device": device}
    fit_batches = batches_of(graph, fit_imgs, bs, device)
    t0 = time.monotonic()
    if hasattr(method, "fit_statistics"):
        scorer.eval()
        with torch.no_grad():
            if features is not None and hasattr(method, "fit_features"):
                method.fit_features(features)
            else:
                method.fit_statistics(fit_batches)
        record["statistics_seconds"] = round(time.monotonic() - t0, 2)
    if method.trains():
        record.update(_epochs(method, graph, fit_imgs, hold_imgs, settings, device, bs, log))
    if hasattr(method, "calibrate"):
        scorer.eval()
        with torch.no_grad():
            method.calibrate(batches_of(graph, hold_imgs if getattr(method, "calibrate_on_holdout", False) else fit_imgs,
                                        bs, device))
    graph.to("cpu").eval()
    return record


# A method's CPU epochs are set for a small set. On a larger one a CPU trains no more steps than
# the method's `cpu_steps` (by default: what its CPU epochs take on this many images), so that
# CPU training time stays bounded as a set grows.
CPU_REFERENCE_IMAGES = 24


def default_epochs(method, n_fit, bs, device, given=None):
    """(epochs, rule): `given` (--epochs) if set; on CUDA the method's CUDA epochs; on a CPU its
    CPU epochs, capped at its CPU step budget (at least one epoch)."""
    if given is not None:
        return given, "--epochs"
    if device == "cuda":
        return method.epochs[1], "the method's CUDA default"
    per_epoch = max(1, math.ceil(n_fit / bs))
    budget = method.cpu_steps or method.epochs[0] * math.ceil(CPU_REFERENCE_IMAGES / bs)
    epochs = max(1, min(method.epochs[0], budget // per_epoch))
    rule = f"the method's CPU default ({method.epochs[0]})"
    if epochs < method.epochs[0]:
        rule += f", capped at its CPU budget of {budget} steps: {epochs} epoch(s) of {per_epoch} steps"
    return epochs, rule


def _epochs(method, graph, fit_imgs, hold_imgs, settings, device, bs, log):
    scorer = graph.scorer
    epochs, rule = default_epochs(method, len(fit_imgs), bs, device, settings.epochs)
    if "capped" in rule:
        log(f"{method.name}: {rule}; --epochs N trains longer")
    method.total_epochs = epochs
    opts = method.optimizers()
    amp = device == "cuda"
    scaler = torch.amp.GradScaler("cuda") if amp else None
    ckpt = Checkpoint(settings.out, settings_key(settings, {"epochs": epochs}))
    gen = torch.Generator().manual_seed(settings.seed)
    start, best, best_state, bad = 0, float("inf"), None, 0
    state = ckpt.load() if settings.resume else None
    if state:
        scorer.load_state_dict(state["scorer"])
        for o, s in zip(opts, state["opts"]):
            o.load_state_dict(s)
        gen.set_state(state["gen"])
        torch.set_rng_state(state["rng"])
        start, best, best_state, bad = state["epoch"], state["best"], state["best_state"], state["bad"]
        log(f"resuming from the checkpoint after epoch {start} ({ckpt.path})")
    hold_gen_seed = settings.seed + 1
    history = [tuple(h) for h in state.get("history", [])] if state else []
    t0 = time.monotonic()
    epoch = start
    try:
        for epoch in range(start, epochs):
            if hasattr(method, "begin_epoch"):
                scorer.eval()
                with torch.no_grad():
                    method.begin_epoch(epoch, batches_of(graph, fit_imgs, bs, device))
            scorer.train()
            keep_frozen_in_eval(scorer)
            order = torch.randperm(len(fit_imgs), generator=gen).numpy()
            total, n = 0.0, 0
            for i in range(0, len(order), bs):
                idx = order[i:i + bs]
                if len(idx) < 2 and len(order) > 2:
                    continue
                with torch.no_grad():
                    x = graph.normalise(torch.from_numpy(fit_imgs[idx]).to(device))
                    batch = method.augment(x, gen)
                for o in opts:
                    o.zero_grad(set_to_none=True)
                with torch.autocast("cuda" if amp else "cpu", enabled=amp):
                    loss = method.training_step(batch)
                if not torch.isfinite(loss):
                    raise EdgeError(f"{method.name}: the training loss is not finite at epoch {epoch + 1} "
                                    "(try a smaller --lr or --batch-size)")
                if scaler:
                    scaler.scale(loss).backward()
                    for o in opts:
                        scaler.step(o)
                    scaler.update()
                else:
                    loss.backward()
                    for o in opts:
                        o.step()
                total += float(loss.detach()) * len(idx)
                n += len(idx)
            held = _held_loss(method, graph, hold_imgs, bs, device, hold_gen_seed, amp)
            history.append((round(total / max(n, 1), 5), round(held, 5)))
            log(f"{method.name} epoch {epoch + 1}/{epochs}: loss {total / max(n, 1):.4g}, held-out {held:.4g} "
                f"({time.monotonic() - t0:.0f}s)")
            if held < best - 1e-6 * abs(best):
                best, bad = held, 0
                best_state = {k: v.detach().cpu().clone() for k, v in scorer.state_dict().items()}
            else:
                bad += 1
            ckpt.save({"epoch": epoch + 1, "scorer": scorer.state_dict(), "opts": [o.state_dict() for o in opts],
                       "gen": gen.get_state(), "rng": torch.get_rng_state(), "best": best,
                       "best_state": best_state, "bad": bad,
                       "history": history})
            if settings.patience and bad >= settings.patience and getattr(method, "early_stopping", True):
                log(f"{method.name}: stopping early, the held-out loss has not improved for {bad} epochs")
                break
    except KeyboardInterrupt:
        raise EdgeError(f"interrupted during epoch {epoch + 1}; run the same command again to resume from the "
                        f"checkpoint after epoch {epoch} ({ckpt.dir})") from None
    if best_state is not None and getattr(method, "early_stopping", True):
        scorer.load_state_dict(best_state)
    scorer.eval()
    ckpt.clear()
    return {"epochs": epochs, "epochs_rule": rule, "epochs_run": len(history), "loss_history": history,
            "batch_size": bs, "amp": amp, "train_seconds": round(time.monotonic() - t0, 2)}


def keep_frozen_in_eval(scorer):
    """Frozen pretrained backbones stay in eval mode while the rest trains (their batch norm
    statistics are part of the pretrained weights)."""
    from .backbones import Backbone
    for m in scorer.modules():
        if isinstance(m, Backbone) and not any(p.requires_grad for p in m.parameters()):
            m.eval()


def _held_loss(method, graph, hold_imgs, bs, device, seed, amp):
    """The training loss on the held-out good images (same synthetic defects every epoch)."""
    graph.scorer.eval()
    gen = torch.Generator().manual_seed(seed)
    total, n = 0.0, 0
    with torch.no_grad(), torch.autocast("cuda" if amp else "cpu", enabled=amp):
        for x in batches_of(graph, hold_imgs, bs, device)():
            total += float(method.training_step(method.augment(x, gen))) * len(x)
            n += len(x)
    graph.scorer.train()
    return total / max(n, 1)
