"""Fold refits that share work across folds (the threshold's fold scoring): PatchCore's banks
from one greedy coreset, PaDiM's Gaussians from sums. Synthetic embeddings, no backbone."""

import torch

from edge.common import oppoint as op
from train.methods.base import Context
from train.methods.padim import Padim
from train.methods import patchcore
from train.methods.patchcore import FoldCoresets, PatchCore, bank_size, greedy_coreset, nearest

CTX = Context((64, 64))


def clustered(n_img=40, per_image=16, c=24, seed=0):
    """Patches of n_img images in runs of 8 images that share a cluster of their own: leaving a
    run out removes the coreset entries that stood for that cluster's patches in other runs' images."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_img // 8 + 1, c, generator=g) * 6
    rows = [centres[i // 8] + torch.randn(per_image, c, generator=g) for i in range(n_img)]
    rows[0][:4] = centres[1] + torch.randn(4, c, generator=g)          # image 0 also shows run 1's cluster
    return torch.cat(rows)


def test_one_coreset_fold_banks_leave_out_and_cover_again():
    per_image, n_img = 16, 40
    x = clustered(n_img, per_image)
    cs = FoldCoresets(x, per_image, ratio=0.5, max_bank=48, dims=8, seed=0)   # max_bank binds
    assert torch.equal(cs.idx, greedy_coreset(x, 48, 8, 0))
    n, covered = n_img, 0
    for a, b in op.contiguous_folds(n, 5):
        fit = op.fit_indices(n, a, b)
        bank = cs.fold(fit)
        left_out = set(range(n)) - set(fit)
        assert not {int(i) // per_image for i in bank} & left_out            # nothing of the left-out images
        assert len(bank) <= 48 and cs.radius is not None
        # Every fitted patch lies within the full coreset's radius of the fold's bank (in the
        # projection the coreset is chosen in): the removed entries' patches were covered again.
        rows = torch.cat([torch.arange(i * per_image, (i + 1) * per_image) for i in fit])
        d = nearest(cs.z[rows], cs.zz[rows], cs.z[bank], cs.zz[bank])[0]
        assert float(d.max()) <= cs.radius * (1 + 1e-4) + 1e-4
        # Removing alone would leave some of them farther away (the cover did something).
        kept = cs.idx[[int(i) // per_image in set(fit) for i in cs.idx]]
        if len(kept) < len(bank):
            assert float(nearest(cs.z[rows], cs.zz[rows], cs.z[kept], cs.zz[kept])[0].max()) > cs.radius
            covered += 1
    assert covered >= 2


def test_fold_banks_from_the_nearest_entries_equal_those_from_the_whole_bank(monkeypatch):
    """A patch whose nearest entry was removed takes the first kept one of its NEAR nearest; with
    NEAR = 1 every such patch is compared with the whole bank: the banks must be the same."""
    x, fits = clustered(40, 16), [op.fit_indices(40, a, b) for a, b in op.contiguous_folds(40, 5)]
    fast = [FoldCoresets(x, 16, 0.5, 48, 8, 0).fold(f) for f in fits]
    monkeypatch.setattr(patchcore, "NEAR", 1)
    full = [FoldCoresets(x, 16, 0.5, 48, 8, 0).fold(f) for f in fits]
    assert all(torch.equal(a, b) for a, b in zip(fast, full))


def test_patchcore_final_fit_reuses_the_folds_coreset():
    m = PatchCore(CTX, coreset_ratio=0.2, coreset_dims=8)
    emb = clustered(24, 16).reshape(24, 4, 4, 24).permute(0, 3, 1, 2).contiguous()
    fits = [op.fit_indices(24, a, b) for a, b in op.contiguous_folds(24, 4)]
    heads = list(m.fold_heads(emb, fits))
    assert len(heads) == 4
    m.fit(emb)
    fresh = PatchCore(CTX, coreset_ratio=0.2, coreset_dims=8)
    fresh.fit(emb)
    assert torch.equal(m.bank, fresh.bank)


def test_padim_fold_heads_equal_a_refit_without_the_fold():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(30, 40, 4, 5, generator=g) * 3 + 7        # far from zero: the sums must stay exact
    fits = [op.fit_indices(30, a, b) for a, b in op.contiguous_folds(30, 5)]
    m = Padim(CTX, dims=10)
    for fit, head in zip(fits, m.fold_heads(emb, fits)):
        ref = Padim(CTX, dims=10)
        ref.fit(emb[fit])
        want = ref.head()(emb)
        assert torch.allclose(head(emb), want, rtol=1e-4, atol=1e-4)
    other = Padim(CTX, dims=10)
    other.fit(emb[fits[1]])
    assert not torch.allclose(next(m.fold_heads(emb, fits[:1]))(emb), other.head()(emb), atol=1e-2)


def test_padim_fold_scores_corrected_to_the_full_fit_size():
    """PaDiM with more dimensions than images: a fold's model, fitted on fewer images, scores new
    images higher than the bundle's model does; the fit-size correction brings the held-out scores
    most of the way to what the full model gives images it has never seen, without going below
    (seeds 0-5: 33-38 % above before, 2-10 % after)."""
    import numpy as np
    g = torch.Generator().manual_seed(1)
    scale = torch.linspace(3, 0.3, 60).view(1, 60, 1, 1)               # a decaying spectrum
    emb = (torch.randn(32, 60, 3, 3, generator=g) * scale).double()
    new = (torch.randn(400, 60, 3, 3, generator=g) * scale).double()
    n = 32
    parts = op.contiguous_folds(n)
    fits = [op.fit_indices(n, a, b) for a, b in parts]
    m = Padim(CTX, dims=60)

    def held(fit_list):
        return np.concatenate([head(emb[a:b].float()).mean((1, 2)).double().numpy()
                               for head, (a, b) in zip(m.fold_heads(emb.float(), fit_list), parts)])
    raw = held(fits)
    fewer = [op.fewer_fits(f) for f in fits]
    assert all(len(f2) < len(f) and set(f2) <= set(f) for f, f2 in zip(fits, fewer))
    corr = op.fit_size_correction(raw, held(fewer), n, [len(f) for f in fits], [len(f) for f in fewer])
    full = next(m.fold_heads(emb.float(), [range(n)]))
    truth = float(np.median(full(new.float()).mean((1, 2)).double().numpy()))
    before, after = np.median(raw) / truth - 1, np.median(raw * corr["factor"]) / truth - 1
    assert before > 0.2                                                  # the bias the correction is for
    assert -0.02 < after < 0.4 * before, (before, after, corr)           # most of it gone, not overdone


def test_fit_size_correction_only_lowers_and_at_most_halves():
    import numpy as np
    s = np.full(10, 9.0)
    c = op.fit_size_correction(s, s / 0.9, 32, [20] * 5, [15] * 5)      # 0.9 per 5 images, 12 to go
    assert c["factor"] == round(0.9 ** (12 / 5), 6) and c["fit_images"] == 20 and "32" in c["rule"]
    assert op.fit_size_correction(s, s * 0.9, 32, [20] * 5, [15] * 5)["factor"] == 1.0
    low = op.fit_size_correction(s, s * 10, 32, [20] * 5, [15] * 5)
    assert low["factor"] == 0.5 and low["measured"] < 0.5
    assert op.trend_folds(5) == [0, 1, 2, 3, 4]                         # measured on every fold of a small set,
    many = op.trend_folds(40)                                            # on 8 spread over a large one
    assert len(many) == 8 and many[0] == 0 and many[-1] == 39
