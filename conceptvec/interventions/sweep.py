"""Dose-response: clamp neurons across a range of values and watch the targets move.

Each value is one :func:`measure_effect` with the same prompts, targets and (same-seed, so
the same) random control neurons, so the curve of the real neurons and the band of the
controls are directly comparable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from conceptvec.errors import BadInterventionError
from conceptvec.models.backends import resolve
from conceptvec.neurons import NeuronId
from conceptvec.progress import progress_bar
from conceptvec.results import Result
from conceptvec.tokens import show
from conceptvec.types import ModelSource, Tokenizer

from .edit_specs import Positions, clamp, finite
from .effect import EffectResult, measure_effect, pretty_as_str


@dataclass
class DoseResponse(Result):
    """Target probabilities as a function of the clamp value, with random controls."""

    model: str
    neurons: list[str]
    targets: list[str]
    values: list[float]
    effects: list[EffectResult]
    """One :class:`EffectResult` per value, in the order of :attr:`values`."""

    @property
    def base_prob(self) -> float:
        """Mean over prompts of the summed target probability without intervention."""
        return _mean([sum(p.prob_before) for p in self.effects[0].prompts])

    @property
    def probs(self) -> list[float]:
        """Per value, the mean over prompts of the summed target probability."""
        return [_mean([sum(p.prob_after) for p in e.prompts]) for e in self.effects]

    @property
    def control_probs(self) -> list[list[float]]:
        """Per value, per control: the mean over prompts of the summed target probability."""
        out = []
        for e in self.effects:
            n = len(e.controls)
            out.append([_mean([p.control_probs[k] for p in e.prompts]) for k in range(n)])
        return out

    @property
    def percentiles(self) -> list[float | None]:
        """Per value, the percentile of the mean change in log p(target) among controls."""
        return [e.percentile for e in self.effects]

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-ready dict."""
        return {
            "model": self.model,
            "neurons": self.neurons,
            "targets": self.targets,
            "base_prob": self.base_prob,
            "points": [
                {
                    "value": v,
                    "prob": p,
                    "mean_delta_logprob": e.mean_delta,
                    "percentile": e.percentile,
                    "control_mean_deltas": e.control_mean_deltas,
                    "control_probs": c,
                }
                for v, p, e, c in zip(self.values, self.probs, self.effects, self.control_probs)
            ],
            "effects": [e.to_dict() for e in self.effects],
        }

    _repr_pretty_ = pretty_as_str

    def _html_rows(self) -> tuple[str, list[dict[str, object]]]:
        rows: list[dict[str, object]] = [{"clamp value": "(none)", "p(target)": self.base_prob}]
        for v, p, e, c in zip(self.values, self.probs, self.effects, self.control_probs):
            rows.append(
                {
                    "clamp value": v,
                    "p(target)": p,
                    "mean change in log p": e.mean_delta,
                    "controls' max p": max(c) if c else None,
                    "percentile among controls": e.percentile,
                }
            )
        targets = ", ".join(show(t) for t in self.targets)
        return f"{self.model}: clamp {', '.join(self.neurons)}, targets {targets}", rows

    def __str__(self) -> str:
        head = f"{self.model}  clamp {', '.join(self.neurons)}  targets {self.targets}"
        cols = f"{'value':>8} {'p(target)':>10} {'dlogp':>8} {'ctrl max p':>11} {'pct':>5}"
        lines = [head, cols, f"{'(none)':>8} {self.base_prob:>10.4f}"]
        for v, p, e, c in zip(self.values, self.probs, self.effects, self.control_probs):
            ctrl = f"{max(c):>11.4f}" if c else ""
            pct = "" if e.percentile is None else f" {e.percentile:>5.0f}"
            lines.append(f"{v:>8g} {p:>10.4f} {e.mean_delta:>8.3f} {ctrl}{pct}".rstrip())
        return "\n".join(lines)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def dose_response(
    model: ModelSource,
    prompts: str | Sequence[str],
    neurons: NeuronId | str | Sequence[NeuronId | str],
    values: Sequence[float],
    targets: str | int | Sequence[str | int],
    *,
    positions: Positions = "all",
    controls: int = 0,
    top_k: int = 5,
    generate: int = 0,
    chat: bool = False,
    seed: int = 0,
    tokenizer: Tokenizer | None = None,
    progress: bool = False,
) -> DoseResponse:
    """Return a :class:`DoseResponse`: ``neurons`` clamped to each of ``values`` in turn.

    Controls (``controls`` random neurons of the same layers, the same at every value) are
    clamped to the same values. ``progress`` shows a tqdm bar on stderr, one step per value.
    """
    target = resolve(model, tokenizer)
    ns = [neurons] if isinstance(neurons, (str, NeuronId)) else list(neurons)
    ns = [NeuronId.parse(n) for n in ns]
    values = [finite(v, "clamp value") for v in values]
    if not values or not ns:
        raise BadInterventionError("pass at least one neuron and one clamp value")
    effects = []
    with progress_bar(len(values), "dose response", progress) as bar:
        for v in values:
            effects.append(
                measure_effect(
                    target,
                    prompts,
                    [clamp(n, v, positions) for n in ns],
                    targets,
                    controls=controls,
                    top_k=top_k,
                    generate=generate,
                    chat=chat,
                    seed=seed,
                )
            )
            bar.set_postfix_str(f"clamp {v:g}")
            bar.update(1)
    return DoseResponse(
        model=target.model.name,
        neurons=[str(n) for n in ns],
        targets=effects[0].targets,
        values=values,
        effects=effects,
    )
