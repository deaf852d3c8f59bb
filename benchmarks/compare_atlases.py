"""Check that two atlases hold identical shards (ids and scores), e.g. two ways of mapping.

python benchmarks/compare_atlases.py ATLAS_A ATLAS_B
"""

from __future__ import annotations

import sys

import torch

from conceptvec.atlas import Atlas


def main() -> None:
    a, b = Atlas(sys.argv[1]), Atlas(sys.argv[2])
    if a.manifest["shards"].keys() != b.manifest["shards"].keys():
        sys.exit("the atlases hold different shards")
    differ = [
        f"L{layer}.{m}"
        for layer, m, s in a.shards()
        if not all(torch.equal(s[t], b.shard(layer, m)[t]) for t in s)
    ]
    print(f"{len(a.manifest['shards'])} shards compared; identical: {not differ}; differ: {differ}")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
