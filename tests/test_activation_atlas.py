"""The activation atlas: streamed exemplars and statistics equal a brute-force reading,
resume after an interruption gives the same bytes, corpus sources, refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import conceptvec
from conceptvec.activations import read_activations
from conceptvec.atlas import build_atlas
from conceptvec.atlas import corpus_pass as cp
from conceptvec.atlas.corpus import Corpus
from conceptvec.atlas.exemplars import StatsConfig
from conceptvec.errors import AtlasError, BadTextError
from conceptvec.tokens import show

WORDS = "dog cat garden bird Paris France Berlin capital Harry went with and the".split()


def texts(n: int = 30, seed: int = 0) -> list[str]:
    """Distinct generated texts (no two tokens share a context, so no ties)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        idx = torch.randint(
            len(WORDS), (int(torch.randint(3, 25, (1,), generator=g)),), generator=g
        )
        out.append(f"{i} " + " ".join(WORDS[j] for j in idx.tolist()) + ".")
    return out


CFG = StatsConfig(k=4, window=3, threshold=0.05, sample=100_000, block=4)


@pytest.fixture
def atlas_dir(tiny_dir, tmp_path):
    out = tmp_path / "atlas"
    build_atlas(str(tiny_dir("llama")), out, k=5, progress=False)
    return out


def _corpus(tmp_path: Path, items: list[str]) -> Path:
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in items) + "\n")
    return path


def _run(atlas_dir, corpus, **kw):
    kw.setdefault("stats", CFG)
    kw.setdefault("max_tokens", 12)
    kw.setdefault("batch_tokens", 48)
    kw.setdefault("chunk_tokens", 40)
    return cp.add_activations(atlas_dir, str(corpus), progress=False, **kw)


def _layer(atlas_dir: Path, layer: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(atlas_dir / cp.ACT_DIR / cp.layer_file(layer)))


def test_streamed_statistics_equal_brute_force(atlas_dir, tiny_dir, tmp_path):
    items = texts()
    report = _run(atlas_dir, _corpus(tmp_path, items))
    model = conceptvec.load(str(tiny_dir("llama")), quiet=True)
    d_mlp = model.dims.d_mlp
    neurons = [f"L1.{i}" for i in range(d_mlp)]
    acts = read_activations(model, items, neurons, max_tokens=12)
    assert report.tokens == acts.n_tokens and report.texts == len(items)
    allv = torch.cat([w.values for w in acts.windows])  # [tokens, d_mlp]
    where = [(w.text, w.start + p) for w in acts.windows for p in range(len(w.ids))]
    got = _layer(atlas_dir, 1)
    for side, largest in (("top", True), ("bottom", False)):
        ref = allv.topk(CFG.k, dim=0, largest=largest)
        assert torch.allclose(got[f"{side}_values"], ref.values.T, atol=1e-5)
        for j in range(0, d_mlp, 7):
            for s in range(CFG.k):
                t, p = where[int(ref.indices[s, j])]
                assert (int(got[f"{side}_text"][j, s]), int(got[f"{side}_pos"][j, s])) == (t, p)
                ids = acts.windows[0].ids  # the window's centre token is the firing token
                center = int(got[f"{side}_window_ids"][j, s, CFG.window])
                text_ids = [i for w in acts.windows if w.text == t for i in w.ids]
                assert center == text_ids[p] and ids is not None
                vals = got[f"{side}_window_values"][j, s]
                assert abs(float(vals[CFG.window]) - float(got[f"{side}_values"][j, s])) < 1e-5
    assert torch.allclose(got["mean"], allv.double().mean(0).float(), atol=1e-5)
    assert torch.allclose(got["std"], allv.double().std(0, unbiased=False).float(), atol=1e-4)
    assert torch.allclose(got["density_above"], (allv > CFG.threshold).float().mean(0))
    assert torch.allclose(got["density_below"], (allv < -CFG.threshold).float().mean(0))
    q = torch.quantile(allv, torch.tensor(CFG.quantiles), dim=0).T
    assert torch.allclose(got["quantiles"], q, atol=1e-5)  # the sample holds every token


def test_windows_stay_inside_the_sequence(atlas_dir, tmp_path):
    _run(atlas_dir, _corpus(tmp_path, texts()))
    got = _layer(atlas_dir, 0)
    ids, pos = got["top_window_ids"], got["top_pos"]
    w = CFG.window
    left_missing = (ids[:, :, :w] == -1).sum(-1)
    # a token at text position p < window has at most p tokens of left context
    assert bool((left_missing >= (w - pos).clamp(min=0)).all())


def test_resume_after_interruption_gives_the_same_bytes(atlas_dir, tmp_path, monkeypatch):
    corpus = _corpus(tmp_path, texts(40))
    _run(atlas_dir, corpus)
    want = {p.name: p.read_bytes() for p in (atlas_dir / cp.ACT_DIR).glob("L*.safetensors")}
    cp._clear(atlas_dir / cp.ACT_DIR)
    monkeypatch.setattr(cp, "CHECKPOINT_SECONDS", 0.0)
    calls = {"n": 0}
    real = cp._Pass.chunk

    def stop_third(self, *a):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, *a)

    monkeypatch.setattr(cp._Pass, "chunk", stop_third)
    with pytest.raises(KeyboardInterrupt):
        _run(atlas_dir, corpus)
    manifest = json.loads((atlas_dir / cp.ACT_DIR / "manifest.json").read_text())
    assert not manifest["complete"] and manifest["progress"]["tokens"] > 0
    assert (atlas_dir / cp.ACT_DIR / cp.STATE).exists()
    monkeypatch.setattr(cp._Pass, "chunk", real)
    report = _run(atlas_dir, corpus)
    assert report.resumed_from_tokens == manifest["progress"]["tokens"]
    got = {p.name: p.read_bytes() for p in (atlas_dir / cp.ACT_DIR).glob("L*.safetensors")}
    assert got == want
    assert not (atlas_dir / cp.ACT_DIR / cp.STATE).exists()
    again = _run(atlas_dir, corpus)  # finished: checked by hash, nothing run
    assert again.reused and again.sha256 == report.sha256


def test_a_changed_corpus_is_refused_on_resume_and_on_reuse(atlas_dir, tmp_path, monkeypatch):
    corpus = _corpus(tmp_path, texts(40))
    monkeypatch.setattr(cp, "CHECKPOINT_SECONDS", 0.0)
    real = cp._Pass.chunk
    calls = {"n": 0}

    def stop_second(self, *a):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, *a)

    monkeypatch.setattr(cp._Pass, "chunk", stop_second)
    with pytest.raises(KeyboardInterrupt):
        _run(atlas_dir, corpus)
    monkeypatch.setattr(cp._Pass, "chunk", real)
    _corpus(tmp_path, ["changed " + t for t in texts(40)])
    with pytest.raises(AtlasError, match="corpus changed"):
        _run(atlas_dir, corpus)
    _run(atlas_dir, corpus, overwrite=True)
    _corpus(tmp_path, texts(40))
    with pytest.raises(AtlasError, match="another corpus"):
        _run(atlas_dir, corpus)
    with pytest.raises(AtlasError, match="settings differs"):
        _run(atlas_dir, corpus, max_tokens=10)


def test_damaged_checkpoint_is_refused(atlas_dir, tmp_path, monkeypatch):
    corpus = _corpus(tmp_path, texts(40))
    monkeypatch.setattr(cp, "CHECKPOINT_SECONDS", 0.0)
    real = cp._Pass.chunk

    def stop(self, *a):
        if self.stats[0].t["n"] > 0:
            raise KeyboardInterrupt
        return real(self, *a)

    monkeypatch.setattr(cp._Pass, "chunk", stop)
    with pytest.raises(KeyboardInterrupt):
        _run(atlas_dir, corpus)
    monkeypatch.setattr(cp._Pass, "chunk", real)
    state = atlas_dir / cp.ACT_DIR / cp.STATE
    state.write_bytes(state.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(AtlasError, match="damaged"):
        _run(atlas_dir, corpus)


def test_corpus_sources(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("First para.\n\nSecond para.\n")
    (tmp_path / "d" / "b.jsonl").write_text('{"body": "third"}\n\n"fourth"\n')
    (tmp_path / "d" / "c.json").write_text('[{"body": "fifth"}, "sixth"]')
    (tmp_path / "d" / "skip.bin").write_bytes(b"\xff")
    got = list(Corpus(str(tmp_path / "d"), text_field="body").texts())
    assert got == ["First para.", "Second para.", "third", "fourth", "fifth", "sixth"]
    with pytest.raises(BadTextError, match="--text-field"):
        list(Corpus(str(tmp_path / "d" / "b.jsonl")).texts())
    with pytest.raises(BadTextError, match="neither a file nor a folder"):
        list(Corpus(str(tmp_path / "missing")).texts())
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(BadTextError, match="not valid JSON"):
        list(Corpus(str(tmp_path / "bad.jsonl")).texts())


def test_missing_datasets_package_is_one_line(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_datasets(name, *a, **kw):
        if name == "datasets":
            raise ImportError(name)
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(BadTextError, match="needs the datasets package"):
        list(Corpus("datasets:wikitext").texts())


def test_cli_map_with_corpus_and_on_an_existing_atlas(tiny_dir, tmp_path, monkeypatch, capsys):
    from .conftest import run_cli

    corpus = _corpus(tmp_path, texts(12))
    out = tmp_path / "a"
    args = ["map", str(tiny_dir("llama")), "-o", str(out), "-k", "5", "-q", "--export", "none"]
    code, stdout, err = run_cli(
        [*args, "--corpus", str(corpus), "--seq-len", "12"], monkeypatch, capsys
    )
    assert code == 0, err
    assert "activations:" in stdout and (out / cp.ACT_DIR / "L002.safetensors").exists()
    other = tmp_path / "b"
    code, _, err = run_cli(
        args[:3] + [str(other), "-k", "5", "-q", "--export", "none"], monkeypatch, capsys
    )
    assert code == 0 and not (other / cp.ACT_DIR).exists()
    code, stdout, err = run_cli(
        ["map", str(other), "--corpus", str(corpus), "--layers", "1", "-q", "--export", "none"],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    assert (other / cp.ACT_DIR / "L001.safetensors").exists()
    assert not (other / cp.ACT_DIR / "L002.safetensors").exists()
    code, _, err = run_cli(
        ["map", str(other), "--corpus", str(tmp_path / "nope.txt")], monkeypatch, capsys
    )
    assert code == 2 and "neither a file nor a folder" in err and "Traceback" not in err


# ------------------------------------------------------------------ cards, agreement, contexts
@pytest.fixture
def act_atlas(atlas_dir, tmp_path):
    _run(atlas_dir, _corpus(tmp_path, texts(30)), max_tokens=64, batch_tokens=256)
    from conceptvec.atlas import Atlas

    return Atlas(atlas_dir)


def test_card_shows_both_views(act_atlas):
    card = act_atlas.neuron("L1.5")
    assert card.top_tokens == act_atlas._decoding("L1.5", "down").top_tokens
    a = card.activity
    assert a is not None and len(a.top) == CFG.k and len(a.bottom) == CFG.k
    assert a.top[0].value >= a.top[-1].value and a.bottom[0].value <= a.bottom[-1].value
    assert a.top[0].values[a.top[0].center] == pytest.approx(a.top[0].value)
    text = str(card)
    assert "fires on" in text and f"{a.bottom[0].value:+9.3f}" in text
    assert a.bottom[0].snippet() in text and a.top[0].snippet() in text
    assert "outline" in card._repr_html_()
    assert card.to_dict()["activity"]["sign"] in (1, -1)
    plain = act_atlas.neuron("L1.5", "up")
    assert plain.activity is not None  # one neuron, every matrix: the same activations


@pytest.mark.parametrize("matrix", ["down", "up", "gate"])
def test_agreement_equals_a_hand_count(act_atlas, tiny_dir, matrix):
    from conceptvec.activations import top_contexts
    from conceptvec.atlas.agreement import layer_agreement, rank_agreement

    model = conceptvec.load(str(tiny_dir("llama")), quiet=True)
    items = texts(30)
    got = layer_agreement(act_atlas, 1, matrix)
    for j in range(0, 64, 9):
        hi = top_contexts(model, f"L1.{j}", items, top=CFG.k, window=1, max_tokens=64)
        lo = top_contexts(model, f"L1.{j}", items, top=CFG.k, window=1, max_tokens=64, bottom=True)
        positive = hi.contexts[0].value >= -lo.contexts[0].value
        side = hi if positive else lo
        d = act_atlas._decoding(f"L1.{j}", matrix)
        decoded = set(d.top_tokens if (positive or matrix == "gate") else d.bottom_tokens)
        matched = counted = 0
        for c in side.contexts:
            if (c.value > 0) != positive or c.value == 0:
                continue
            look = c.token if matrix != "down" else (c.right[0] if c.right else None)
            if look is None:
                continue
            counted += 1
            matched += look in decoded
        assert (int(got["matched"][j]), int(got["counted"][j])) == (matched, counted), j
        assert int(got["sign"][j]) == (1 if positive else -1)
    ranked = rank_agreement(act_atlas, matrix=matrix, top=None)
    scores = [h.score for h in ranked]
    assert scores == sorted(scores, reverse=True) and ranked[0].score == max(scores)


def test_search_contexts_finds_the_word(act_atlas):
    from conceptvec.atlas.agreement import search_contexts

    hits = search_contexts(act_atlas, "Berlin")
    assert hits and all("berlin" in h.snippet.casefold() for h in hits)
    assert [h.count for h in hits] == sorted((h.count for h in hits), reverse=True)
    assert not search_contexts(act_atlas, "zebra")


def test_cli_search_agreement_and_contexts(act_atlas, monkeypatch, capsys):
    from .conftest import run_cli

    path = str(act_atlas.path)
    code, out, err = run_cli(["search", path, "--by", "agreement", "-n", "5"], monkeypatch, capsys)
    assert code == 0 and "agreement" in out.splitlines()[0], err
    code, out, err = run_cli(["search", path, "Paris", "--in", "contexts"], monkeypatch, capsys)
    assert code == 0 and "Paris" in out, err
    code, out, err = run_cli(["search", path, "--by", "agreement", "dog"], monkeypatch, capsys)
    assert code == 2 and "drop WORD" in err


def test_html_export_writes_the_second_view(act_atlas, tmp_path):
    from conceptvec.atlas.html import export_html

    site = export_html(act_atlas, tmp_path / "html", page_size=16).parent
    meta = (site / "data" / "meta.js").read_text()
    assert '"activations":{"layers":[0,1,2]' in meta
    page = (site / "data" / "acts" / "L001.p000.js").read_text()
    body = json.loads(page[page.index(",") + 1 : page.rindex(")")])
    card = act_atlas.neuron("L1.3")
    first = body["bottom"][3][0]  # [value, text, position, centre, n, ids..., values...]
    assert first[1:3] == [card.activity.bottom[0].text, card.activity.bottom[0].position]
    assert first[0] / 10 ** body["decimals"] == pytest.approx(
        card.activity.bottom[0].value, abs=1e-3
    )


@pytest.mark.slow
def test_browser_shows_both_views(act_atlas, tmp_path):
    import base64

    from conceptvec.atlas.html import export_html

    from .test_atlas_html import CHROMIUM, Browser

    if CHROMIUM is None:
        pytest.skip("chromium is not on PATH")
    site = export_html(act_atlas, tmp_path / "html", page_size=16)
    browser = Browser(CHROMIUM, tmp_path / "profile")
    try:
        page = browser.open(site.as_uri() + "#n=L1.3&m=down")
        page.wait_for("document.querySelectorAll('.card .acts').length === 16")
        card = act_atlas.neuron("L1.3")
        sel = '[data-neuron="L1.3"]'
        shown = page.eval(
            f"[...document.querySelectorAll('{sel} .ex')].map(p => [p.className, "
            "p.querySelector('.val').textContent, p.querySelector('.fire').textContent])"
        )
        want = [("ex highest", e) for e in card.activity.top[:5]]
        want += [("ex lowest", e) for e in card.activity.bottom[:5]]
        assert len(shown) == len(want)
        for (cls, val, fire), (want_cls, e) in zip(shown, want):
            sign = "\u2212" if e.value < 0 else "+"
            assert cls == want_cls and val == f"{sign}{abs(e.value):.3f}"
            assert fire == show(e.token)[1:-1]
        tokens = page.card_tokens("L1.3")
        assert tokens["top"] == [show(t) for t in card.top_tokens]
        assert page.errors() == []
        shot = browser.call("Page.captureScreenshot", page.session)["data"]
        out = Path(os.environ.get("CONCEPTVEC_SCREENSHOTS", tmp_path)) / "activation_card.png"
        out.write_bytes(base64.b64decode(shot))
        assert out.stat().st_size > 1000
    finally:
        browser.close()


def test_neuronpedia_export_holds_the_exemplars(act_atlas, tmp_path):
    import gzip

    from conceptvec.atlas.export import export_neuronpedia

    out = export_neuronpedia(act_atlas, tmp_path / "np")
    files = sorted(p.name for p in out.iterdir())
    assert "batch-0.jsonl.gz" in files and "activations-batch-0.jsonl.gz" in files
    rows = [
        json.loads(line)
        for name in files
        if name.startswith("activations-")
        for line in gzip.open(out / name, "rt")
    ]
    assert len(rows) == 3 * 64 * 2 * CFG.k
    card = act_atlas.neuron("L2.7")
    mine = [r for r in rows if r["layer"] == "2-mlp-down" and r["index"] == "7"]
    low = [r for r in mine if r["sign"] == -1][0]
    e = card.activity.bottom[0]
    assert low["tokens"] == e.tokens and low["maxValueTokenIndex"] == e.center
    assert low["values"][e.center] == pytest.approx(e.value, abs=1e-4)
    assert low["minValue"] == pytest.approx(e.value, abs=1e-4) or min(e.values) < e.value
    export_neuronpedia(act_atlas, tmp_path / "np", overwrite=True)  # our files: replaced


def test_results_table_holds_the_benchmark_numbers():
    root = Path(__file__).resolve().parent.parent
    text = (root / "benchmarks" / "RESULTS.md").read_text()
    for name, label in (
        ("activation-atlas-smollm2-cpu.json", "fresh start"),
        ("activation-atlas-smollm2-cpu-warm.json", "after 32768 warm tokens"),
        ("activation-atlas-smollm2-cpu-warm98k.json", "after 98304 warm tokens"),
    ):
        d = json.loads((root / "benchmarks" / "results" / name).read_text())
        row = (
            f"| {label} | {d['tokens']} | {d.get('warm_tokens', 0)} | {min(d['floor_s']):.1f} | "
            f"{min(d['ours_s']):.1f} | {d['ratio']:.2f}x | {d['hook_ratio']:.2f}x | "
            f"{d['naive_s_estimated']:.0f} | {d['naive_ratio']:.1f}x | {d['state_mb']:.0f} |"
        )
        assert row in text, row


@pytest.mark.parametrize("block", [1, 4, 8, 16])
def test_layer_stats_merge_equals_a_full_sort_with_ties_and_tails(block):
    """Many batches of odd sizes (tails, fewer tokens than k), integer activations (ties at
    the k-th place): the kept values equal a full sort of every activation, each kept entry's
    position holds its value, and equal values come out in corpus order."""
    from conceptvec.atlas.exemplars import Batch, LayerStats

    g = torch.Generator().manual_seed(1)
    cfg = StatsConfig(k=5, window=1, threshold=1.0, sample=4, block=block)
    d, seen, every = 7, 0, []
    stats = LayerStats(d, cfg)
    for n in (3, 19, 40, 8, 33, 64, 2, 50):
        x = torch.randint(-6, 7, (1, n, d), generator=g).float()
        x[0, -1, 0], x[0, -1, 1] = 50.0 + n, -50.0 - n  # the last token: in the tail
        every.append(x[0])
        idx = torch.arange(n)
        batch = Batch(
            ids=torch.zeros((1, n), dtype=torch.long),
            mask=torch.ones((1, n), dtype=torch.bool),
            text=torch.zeros(n, dtype=torch.long),
            pos=seen + idx,
            row=torch.zeros(n, dtype=torch.long),
            col=idx,
            lo=torch.zeros(1, dtype=torch.long),
            hi=torch.full((1,), n, dtype=torch.long),
        )
        stats.update(x, batch)
        seen += n
    allv = torch.cat(every)  # [tokens, d]
    from conceptvec.atlas import exemplars

    assert exemplars._SCRATCH  # the batch-sized buffer, reused between batches
    got = stats.finish()
    assert not exemplars._SCRATCH  # and not kept after the pass
    for side, top in (("top", True), ("bottom", False)):
        ref = allv.sort(dim=0, descending=top, stable=True).values[: cfg.k].T
        assert torch.equal(got[f"{side}_values"], ref)
        pos = got[f"{side}_pos"]
        assert torch.equal(allv.gather(0, pos.T).T, got[f"{side}_values"])
        for j in range(d):  # equal values: earlier positions first
            v, p = got[f"{side}_values"][j].tolist(), pos[j].tolist()
            assert all(p[i] < p[i + 1] for i in range(cfg.k - 1) if v[i] == v[i + 1])
        assert len(set(pos.flatten().tolist())) > 1
    assert torch.equal(got["density_above"], (allv > 1).float().mean(0))
    assert torch.equal(got["density_below"], (allv < -1).float().mean(0))


def test_finder_ranks_candidates_by_exemplars_holding_the_name(act_atlas, tiny_dir, atlas_dir):
    from conceptvec.concepts.atlas_rank import context_counts, rank_with_atlas
    from conceptvec.concepts.tokens import concept_tokens
    from conceptvec.errors import ConceptSearchError

    model = conceptvec.load(str(tiny_dir("llama")), quiet=True)
    concept = concept_tokens(model, "Berlin")
    core = set(concept.core_ids)
    part = act_atlas.activations
    assert part is not None
    neurons = [f"L{layer}.{j}" for layer in part.layers for j in range(0, 64, 5)]
    got = context_counts(act_atlas, neurons, concept.core_ids)
    for name, count in zip(neurons, got):  # a hand count over the stored windows
        layer, j = (int(x) for x in name[1:].split("."))
        t = part.layer(layer)
        want = sum(
            1
            for side in ("top", "bottom")
            for s in range(CFG.k)
            if int(t[f"{side}_pos"][j, s]) >= 0
            and core & set(t[f"{side}_window_ids"][j, s].tolist())
        )
        assert count == want, name
    assert any(got) and not all(got)
    assert context_counts(act_atlas, ["L99.0"], concept.core_ids) == [None]
    assert rank_with_atlas([0, 2, None, 2, 1]) == [1, 3, 4, 0, 2]  # ties keep weight order

    plain = conceptvec.find_concept(model, "Berlin", candidates=6, progress=False)
    ranked = conceptvec.find_concept(model, "Berlin", candidates=6, atlas=act_atlas, progress=False)
    counts = ranked.settings["atlas_context_counts"]
    assert [c.neuron for c in ranked.candidates] == list(counts)
    assert list(counts.values()) == sorted(counts.values(), reverse=True) and any(counts.values())
    assert {c.neuron for c in plain.candidates} == set(counts)
    assert "atlas_context_counts" not in plain.settings

    bare = atlas_dir.parent / "bare"
    build_atlas(str(tiny_dir("llama")), bare, k=5, progress=False)
    with pytest.raises(ConceptSearchError, match="no activation part"):
        conceptvec.find_concept(model, "Berlin", candidates=3, atlas=bare, progress=False)


def test_cli_find_with_an_atlas(act_atlas, tiny_dir, tmp_path, monkeypatch, capsys):
    from .conftest import run_cli

    model = str(tiny_dir("llama"))
    args = ["concepts", "find", model, "Berlin", "--candidates", "4", "--json"]
    code, out, err = run_cli([*args, "--atlas", str(act_atlas.path)], monkeypatch, capsys)
    assert code == 0, err
    assert len(json.loads(out)["settings"]["atlas_context_counts"]) == 4
    code, _, err = run_cli([*args, "--atlas", str(tmp_path / "nope")], monkeypatch, capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
