"""Writes default_supports.pt: outputs and unnormalised weights (batch 0, head 0) of the
default supports (sparse="lsh" / "local", no sink, no window) on fixed seeds.

It was run once on the code before k-means, sink and window supports existed; the test
test_defaults_reproduce_the_stored_outputs checks that the code still gives these bits.
Rerun it only to regenerate the reference on purpose, from the repository root:
    PYTHONPATH=. python tests/attention/data/make_default_supports.py
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/ (for conftest)
from conftest import attention, qkv  # noqa: E402

cases = {}
for method in ("lsh", "scatterbrain", "scatterbrain_local"):
    for causal in (False, True):
        for masked in (False, True):
            for n_hashes in ((1, 2) if method != "scatterbrain_local" else (1,)):
                q, k, v = qkv(2, 2, 45, 8, seed=3)
                mask = None
                if masked:
                    mask = torch.ones(2, 45, dtype=torch.bool)
                    mask[1, -7:] = False
                out, w = attention(method, q, k, v, n_features=16, bucket_size=8,
                                   n_hashes=n_hashes, seed=5, causal=causal,
                                   key_padding_mask=mask, return_weights="unnormalized")
                cases[f"{method}-{causal}-{masked}-{n_hashes}"] = (out.clone(), w[0, 0].clone())
torch.save(cases, Path(__file__).parent / "default_supports.pt")
print(len(cases), "cases")
