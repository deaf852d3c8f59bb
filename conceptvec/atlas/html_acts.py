"""The HTML atlas's second view: each neuron's exemplars and statistics, page by page.

For every layer of the activation part, ``data/acts/L012.p003.js`` holds the same neurons as
the token pages of that layer (``page_size`` a page): per neuron its mean, std and densities,
and its top and bottom exemplars, each ``[value, text, position, centre, n, ids..., values...]``
with activations as integers in units of ``10**-decimals``. ``atlas.js`` shows them under the
decoded tokens, the firing token outlined, red for positive and blue for negative values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cards import ActivationPart


def write_activation_pages(
    part: ActivationPart, data: Path, page_size: int, write_script: Any, as_ints: Any
) -> dict[str, Any]:
    """Write the exemplar pages of every layer of ``part`` under ``data/acts``; return the
    facts ``meta.js`` records about them."""
    (data / "acts").mkdir(exist_ok=True)
    w = int(part.settings["window"])
    for layer in part.layers:
        t = part.layer(layer)
        both = torch.cat([t["top_window_values"], t["bottom_window_values"]], dim=1).numpy()
        _, decimals = as_ints(both)
        scale = 10.0**decimals
        n = t["mean"].shape[0]
        for page, start in enumerate(range(0, n, page_size)):
            rows = range(start, min(n, start + page_size))
            payload = {
                "start": start,
                "count": len(rows),
                "decimals": decimals,
                "stats": [[round(float(t[key][i]), 5) for key in _STATS] for i in rows],
                "top": [_exemplars(t, "top", i, scale) for i in rows],
                "bottom": [_exemplars(t, "bottom", i, scale) for i in rows],
            }
            name = f"acts/L{layer:03d}.p{page:03d}"
            write_script(data / f"{name}.js", name, payload)
    return {
        "layers": part.layers,
        "corpus": part.corpus,
        "threshold": part.settings.get("threshold"),
        "window": w,
        "k": part.settings.get("k"),
        "stats": list(_STATS),
    }


_STATS = ("mean", "std", "density_above", "density_below")


def _exemplars(t: dict[str, torch.Tensor], side: str, i: int, scale: float) -> list[list[int]]:
    values = t[f"{side}_values"][i].numpy()
    ids = t[f"{side}_window_ids"][i].numpy()
    wv = t[f"{side}_window_values"][i].numpy()
    w = ids.shape[1] // 2
    out = []
    for s, value in enumerate(values):
        if not np.isfinite(value):
            continue
        keep = np.flatnonzero(ids[s] >= 0)
        center = int(np.searchsorted(keep, w))
        vals = np.rint(np.nan_to_num(wv[s, keep]) * scale).astype(np.int64)
        out.append(
            [
                int(round(float(value) * scale)),
                int(t[f"{side}_text"][i, s]),
                int(t[f"{side}_pos"][i, s]),
                center,
                len(keep),
                *ids[s, keep].tolist(),
                *vals.tolist(),
            ]
        )
    return out
