"""``measure_effect``: what an intervention does to the next token, against random controls.

For each prompt: the log-probability and probability of each target token before and
after, the top next tokens before and after, optionally greedy generations before and
after, and the same change under ``controls`` random-neuron versions of the intervention
(:mod:`.controls`). The effect is reported as a percentile among the controls.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from conceptvec.errors import BadInterventionError
from conceptvec.models.backends import Target, resolve
from conceptvec.progress import progress_bar
from conceptvec.results import Result
from conceptvec.tokens import TokenText, show, token_text
from conceptvec.types import ModelSource, PrettyPrinter, Tokenizer

from .apply import generate as generate_ids
from .apply import logits as forward_logits
from .controls import percentile, random_controls
from .edit_specs import Edit, Edits, WeightEdit, check_against, flatten


def pretty_as_str(self: object, printer: PrettyPrinter, _cycle: bool) -> None:
    """IPython's pretty-printer hook: show a result as its ``str`` (the readable report),
    not as its dataclass fields."""
    printer.text(str(self))


@dataclass(frozen=True)
class TokenProb:
    """One next-token candidate: id, readable text and probability."""

    id: int
    token: str
    prob: float

    def to_dict(self) -> dict[str, object]:
        """Return the token as a plain dict."""
        return {"id": self.id, "token": self.token, "prob": self.prob}


@dataclass
class PromptEffect:
    """The intervention's effect on one prompt's next token (and generation, if asked)."""

    prompt: str
    targets: list[str]
    logprob_before: list[float]
    """log p(target) per target, without the intervention."""
    logprob_after: list[float]
    top_before: list[TokenProb]
    top_after: list[TokenProb]
    control_deltas: list[float] = field(default_factory=list)
    """Mean change of log p(target) under each random control."""
    control_probs: list[float] = field(default_factory=list)
    """Summed p(target) under each random control."""
    generation_before: str | None = None
    generation_after: str | None = None

    @property
    def prob_before(self) -> list[float]:
        """p(target) per target, without the intervention."""
        return [math.exp(x) for x in self.logprob_before]

    @property
    def prob_after(self) -> list[float]:
        """p(target) per target, with the intervention."""
        return [math.exp(x) for x in self.logprob_after]

    @property
    def delta(self) -> float:
        """Mean change of log p(target) over the targets (0.0 without targets)."""
        d = [a - b for a, b in zip(self.logprob_after, self.logprob_before)]
        return sum(d) / len(d) if d else 0.0

    @property
    def percentile(self) -> float | None:
        """Percentile of :attr:`delta` among the controls' (None without controls)."""
        return percentile(self.delta, self.control_deltas)

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-ready dict."""
        return {
            "prompt": self.prompt,
            "targets": [
                {
                    "token": t,
                    "logprob_before": lb,
                    "logprob_after": la,
                    "prob_before": pb,
                    "prob_after": pa,
                }
                for t, lb, la, pb, pa in zip(
                    self.targets,
                    self.logprob_before,
                    self.logprob_after,
                    self.prob_before,
                    self.prob_after,
                )
            ],
            "delta_logprob": self.delta,
            "top_before": [t.to_dict() for t in self.top_before],
            "top_after": [t.to_dict() for t in self.top_after],
            "control_deltas": self.control_deltas,
            "control_probs": self.control_probs,
            "percentile": self.percentile,
            "generation_before": self.generation_before,
            "generation_after": self.generation_after,
        }


@dataclass
class EffectResult(Result):
    """What :func:`measure_effect` found, per prompt and overall."""

    model: str
    intervention: list[str]
    targets: list[str]
    prompts: list[PromptEffect]
    controls: list[list[str]] = field(default_factory=list)
    """Each control intervention, described."""
    add_bos: bool | None = None
    """Whether prompts were run with the model's BOS in front: the model's own Hugging Face
    tokenizer rule, the same on every backend (chat prompts follow their template)."""

    @property
    def mean_delta(self) -> float:
        """Mean over prompts of the change in log p(target)."""
        return sum(p.delta for p in self.prompts) / max(len(self.prompts), 1)

    @property
    def control_mean_deltas(self) -> list[float]:
        """Per control, the mean over prompts of its change in log p(target)."""
        if not self.prompts or not self.controls:
            return []
        n = len(self.prompts)
        return [
            sum(p.control_deltas[k] for p in self.prompts) / n for k in range(len(self.controls))
        ]

    @property
    def percentile(self) -> float | None:
        """Percentile of :attr:`mean_delta` among the controls' (None without controls)."""
        return percentile(self.mean_delta, self.control_mean_deltas)

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-ready dict (what ``conceptvec clamp --json`` prints)."""
        return {
            "model": self.model,
            "intervention": self.intervention,
            "targets": self.targets,
            "mean_delta_logprob": self.mean_delta,
            "percentile": self.percentile,
            "controls": self.controls,
            "control_mean_deltas": self.control_mean_deltas,
            "add_bos": self.add_bos,
            "prompts": [p.to_dict() for p in self.prompts],
        }

    def _html_rows(self) -> tuple[str, list[dict[str, object]]]:
        rows = []
        for p in self.prompts:
            for t, b, a in zip(p.targets, p.prob_before, p.prob_after):
                rows.append(
                    {
                        "prompt": show(p.prompt),
                        "target": show(t),
                        "p before": b,
                        "p after": a,
                        "mean change in log p": p.delta,
                        "percentile among controls": p.percentile,
                        "top before": ", ".join(_fmt(x) for x in p.top_before[:5]),
                        "top after": ", ".join(_fmt(x) for x in p.top_after[:5]),
                    }
                )
            if not p.targets:
                rows.append(
                    {
                        "prompt": show(p.prompt),
                        "top before": ", ".join(_fmt(x) for x in p.top_before[:5]),
                        "top after": ", ".join(_fmt(x) for x in p.top_after[:5]),
                    }
                )
        controls = f", {len(self.controls)} random controls" if self.controls else ""
        return f"{self.model}: {', '.join(self.intervention)}{controls}", rows

    _repr_pretty_ = pretty_as_str

    def __str__(self) -> str:
        lines = [f"{self.model}  {', '.join(self.intervention)}"]
        for p in self.prompts:
            lines.append(f"\nprompt {show(p.prompt)}")
            for t, b, a in zip(p.targets, p.prob_before, p.prob_after):
                lines.append(f"  p({show(t)}): {b:.4g} -> {a:.4g}")
            if p.targets:
                pct = "" if p.percentile is None else f"  (percentile {p.percentile:.0f}"
                pct += "" if p.percentile is None else f" among {len(p.control_deltas)} controls)"
                lines.append(f"  mean change in log p: {p.delta:+.3f}{pct}")
            lines.append("  top before: " + ", ".join(_fmt(t) for t in p.top_before))
            lines.append("  top after:  " + ", ".join(_fmt(t) for t in p.top_after))
            if p.generation_after is not None:
                lines.append(f"  generation before: {show(p.generation_before or '')}")
                lines.append(f"  generation after:  {show(p.generation_after)}")
        return "\n".join(lines)


def _fmt(t: TokenProb) -> str:
    return f"{show(t.token)} {t.prob:.3f}"


# ------------------------------------------------------------------------ encoding
def encode(target: Target, prompt: str, chat: bool = False) -> torch.Tensor:
    """Return ``[1, tokens]`` ids of ``prompt`` (through the chat template if ``chat``;
    otherwise as the model's own tokenizer makes them: :meth:`Target.encode`)."""
    tok = target.tokenizer
    if tok is None:
        raise BadInterventionError(
            f"{target.model.name} has no tokenizer; pass one (tokenizer=tok)"
        )
    if chat:
        if not getattr(tok, "chat_template", None):
            raise BadInterventionError(
                f"the tokenizer of {target.model.name} has no chat template; drop chat/--chat"
            )
        from conceptvec.chat import render_chat

        text = render_chat(tok, [{"role": "user", "content": prompt}])
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    else:  # the model's own rule (its BOS or none), whatever the wrapper's tokenizer adds
        ids = torch.tensor([target.encode(prompt)], dtype=torch.long)
    if ids.shape[1] == 0:
        raise BadInterventionError("the prompt is empty; pass some text")
    return ids.to(target.device)


def target_ids(target: Target, targets: Sequence[str | int]) -> list[int]:
    """Return one token id per target; raise if a target string is not exactly one token."""
    vocab = target.model.dims.vocab
    ids = []
    for t in targets:
        if isinstance(t, int):
            if not 0 <= t < vocab:
                raise BadInterventionError(f"target id {t} is out of range 0..{vocab - 1}")
            ids.append(t)
            continue
        if target.tokenizer is None:
            raise BadInterventionError(
                "string targets need a tokenizer; pass tokenizer=tok, or token ids as targets"
            )
        pieces = target.tokenizer.encode(str(t), add_special_tokens=False)
        if len(pieces) != 1:
            shown = ", ".join(show(x) for x in token_text(target.tokenizer).many(pieces))
            raise BadInterventionError(
                f"target {show(str(t))} is {len(pieces)} tokens ({shown}); targets must be "
                "single tokens, e.g. the first of these (mind the leading space)"
            )
        ids.append(pieces[0])
    return ids


def _top(logp: torch.Tensor, k: int, text: TokenText) -> list[TokenProb]:
    values, ids = logp.topk(min(k, logp.shape[-1]))  # top_k over the vocabulary: all of it
    return [TokenProb(int(i), text(int(i)), float(v.exp())) for v, i in zip(values, ids)]


# ---------------------------------------------------------------------- measuring
def spaceless_twin(tokenizer: Tokenizer, target: str | int) -> str | None:
    """Return ``" " + target`` when ``target`` looks like a word that lost its leading space:
    a word of letters whose spaced form is another single token (" dog" vs "dog")."""
    if tokenizer is None or not isinstance(target, str):
        return None
    if not re.fullmatch(r"[^\W\d_]+", target):
        return None
    bare = tokenizer.encode(target, add_special_tokens=False)
    spaced = tokenizer.encode(" " + target, add_special_tokens=False)
    if len(bare) == 1 and len(spaced) == 1 and bare != spaced:
        return " " + target
    return None


def warn_if_spaceless(tokenizer: Tokenizer, target: str | int, prompts: Sequence[str]) -> None:
    """Warn (one line) when ``target`` looks like it lost its leading space and some prompt
    does not end in a space (after which the word would be the spaced token)."""
    twin = spaceless_twin(tokenizer, target)
    if twin is None or all(p[-1:].isspace() for p in prompts):
        return
    warnings.warn(
        f"target {target!r} has no leading space, and {twin!r} is another token: the one that "
        f"usually follows a word; pass {twin!r} unless you mean the word glued to the text "
        "before it",
        UserWarning,
        stacklevel=3,
    )


CONTROL_BATCH = 16
"""Random controls run this many at a time, one per batch row, in one forward pass."""


def _control_logps(
    target: Target, ids: torch.Tensor, controls: list[list[Edit]]
) -> Iterator[torch.Tensor]:
    """Yield next-token log-probs ``[vocab]`` of ``ids`` under each control, in order.

    Activation and steering controls are batched (each confined to its own row); weight
    edits change every row, so controls with one run alone.
    """
    for start in range(0, len(controls), CONTROL_BATCH):
        chunk = controls[start : start + CONTROL_BATCH]
        if any(isinstance(e, WeightEdit) for c in chunk for e in c):
            for control in chunk:
                yield forward_logits(target, ids, control)[0, -1].log_softmax(-1)
            continue
        edits = [e for c in chunk for e in c]
        rows = [k for k, c in enumerate(chunk) for _ in c]
        batch = ids.repeat(len(chunk), 1)
        yield from forward_logits(target, batch, edits, rows)[:, -1].log_softmax(-1)


def measure_effect(
    model: ModelSource,
    prompts: str | Sequence[str],
    intervention: Edits,
    targets: str | int | Sequence[str | int] = (),
    *,
    controls: int = 0,
    top_k: int = 5,
    generate: int = 0,
    chat: bool = False,
    seed: int = 0,
    tokenizer: Tokenizer | None = None,
    progress: bool = False,
) -> EffectResult:
    """Return an :class:`EffectResult`: the intervention's effect on each prompt's next token.

    ``targets`` are single tokens (``" dog"``) or token ids whose log-probability is tracked;
    ``controls`` random-neuron versions of the intervention give the percentile; ``generate``
    greedy tokens are generated before and after when > 0; ``chat`` applies the chat template.
    ``tokenizer`` is needed for a bare ``transformers`` model (others bring their own).
    ``progress`` shows a tqdm bar on stderr (one step per forward pass or generation).
    """
    target = resolve(model, tokenizer)
    edits = flatten(intervention)
    d = target.model.dims
    check_against(edits, d.n_layers, d.d_mlp, d.d_model)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    targets = [targets] if isinstance(targets, (str, int)) else list(targets)
    if not prompts:
        raise BadInterventionError("no prompts given; pass at least one")
    if top_k < 1 or generate < 0:
        raise BadInterventionError(
            f"top_k must be >= 1 and generate >= 0 (got {top_k}, {generate})"
        )
    if controls and not targets:
        raise BadInterventionError(
            'random controls compare the change in log p(target): pass targets, e.g. [" dog"]'
        )
    ids_t = target_ids(target, targets)
    if not chat:
        for t in targets:
            warn_if_spaceless(target.tokenizer, t, prompts)
    text = token_text(target.tokenizer)
    control_edits = random_controls(edits, d.d_mlp, controls, seed)
    steps = len(prompts) * (2 + len(control_edits) + (2 if generate else 0))
    bar = progress_bar(steps, "measuring effect", progress)

    results = []
    with bar:
        for prompt in prompts:
            results.append(
                _one_prompt(target, prompt, edits, ids_t, control_edits, top_k, generate, chat, bar)
            )
    return EffectResult(
        model=target.model.name,
        intervention=[str(e) for e in edits],
        targets=[text(i) for i in ids_t],
        prompts=results,
        controls=[[str(e) for e in c] for c in control_edits],
        add_bos=target.add_bos,
    )


def _one_prompt(target, prompt, edits, ids_t, control_edits, top_k, generate, chat, bar):
    """Return the :class:`PromptEffect` of one prompt, ticking ``bar`` once per pass."""
    text = token_text(target.tokenizer)

    def next_logp(ids: torch.Tensor, edit: Edits) -> torch.Tensor:
        out = forward_logits(target, ids, edit)[0, -1].log_softmax(-1)
        bar.update(1)
        return out

    ids = encode(target, prompt, chat)
    before, after = next_logp(ids, ()), next_logp(ids, edits)
    lb = [float(before[i]) for i in ids_t]
    la = [float(after[i]) for i in ids_t]
    deltas, probs = [], []
    for c in _control_logps(target, ids, control_edits):
        deltas.append(sum(float(c[i]) - b for i, b in zip(ids_t, lb)) / max(len(ids_t), 1))
        probs.append(sum(math.exp(float(c[i])) for i in ids_t))
        bar.update(1)
    effect = PromptEffect(
        prompt=prompt,
        targets=[text(i) for i in ids_t],
        logprob_before=lb,
        logprob_after=la,
        top_before=_top(before, top_k, text),
        top_after=_top(after, top_k, text),
        control_deltas=deltas,
        control_probs=probs,
    )
    if generate:
        tok = target.tokenizer
        for edit, field_name in (((), "generation_before"), (edits, "generation_after")):
            out = generate_ids(target, ids, edit, generate)[0]
            setattr(effect, field_name, tok.decode(out, skip_special_tokens=True))
            bar.update(1)
    return effect
