// conceptvec atlas browser. Data files under data/ are loaded on demand as <script> tags that
// call conceptvecAtlas.load(name, data), so the page works from file:// without a server.
// Token text is only ever put on screen with textContent.
"use strict";

(function () {
  const RESULTS_STEP = 50; // search results added per "more" click
  const TOP_SHOWN = 5; // top tokens shown beside each search result
  const CACHE_LIMIT = 64; // page and search files kept in memory
  const DEBOUNCE_MS = 150;

  const $ = (id) => document.getElementById(id);
  const state = { meta: null, layer: 0, matrix: "down", page: 0, focus: null };
  let fold = new Map();
  let searchSeq = 0;
  let pageSeq = 0;
  let found = null; // {key, hits, decimals, shown}
  let lastHash = "";

  // ------------------------------------------------------------------ data files
  const loaded = new Map();
  const waiting = new Map();

  window.conceptvecAtlas = {
    load(name, payload) {
      loaded.set(name, payload);
      const w = waiting.get(name);
      if (w) {
        waiting.delete(name);
        w.resolve(payload);
      }
      trimCache();
    },
  };

  function data(name) {
    if (loaded.has(name)) {
      const payload = loaded.get(name);
      loaded.delete(name); // re-insert: most recently used last
      loaded.set(name, payload);
      return Promise.resolve(payload);
    }
    if (waiting.has(name)) return waiting.get(name).promise;
    const w = {};
    w.promise = new Promise((resolve, reject) => {
      w.resolve = resolve;
      w.reject = reject;
    });
    waiting.set(name, w);
    const script = document.createElement("script");
    script.src = "data/" + name + ".js";
    const fail = (why) => {
      script.remove();
      if (waiting.get(name) === w) {
        waiting.delete(name);
        w.reject(new Error("data/" + name + ".js " + why));
      }
    };
    script.onerror = () => fail("is missing; export the atlas again");
    script.onload = () => fail("did not register its data");
    document.head.appendChild(script);
    return w.promise;
  }

  function trimCache() {
    const evictable = [...loaded.keys()].filter((n) => n.startsWith("pages/") || n.startsWith("search/") || n.startsWith("acts/"));
    for (let i = 0; i < evictable.length - CACHE_LIMIT; i++) loaded.delete(evictable[i]);
  }

  // ---------------------------------------------------------------------- helpers
  function node(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  const pad = (n, width) => String(n).padStart(width, "0");
  const fmt = (value, decimals) => (value / 10 ** decimals).toFixed(decimals);
  const neuronName = (layer, index) => "L" + layer + "." + index;
  const pageName = (layer, matrix, page) => "pages/L" + pad(layer, 3) + "." + matrix + ".p" + pad(page, 3);
  const chunkName = (id) => "vocab/" + pad(Math.floor(id / state.meta.vocab_chunk), 3);

  function showError(err) {
    $("errors").append(node("div", null, String((err && err.message) || err)));
  }

  function setStatus(text) {
    $("status").textContent = text;
  }

  async function loadTokens(ids) {
    const names = new Set();
    for (const id of ids) if (id >= 0 && id < state.meta.vocab_size) names.add(chunkName(id));
    await Promise.all([...names].map(data));
  }

  function tokenText(id) {
    const chunk = loaded.get(chunkName(id));
    const text = chunk && chunk[id % state.meta.vocab_chunk];
    return text === undefined ? "<id " + id + ">" : text;
  }

  function tokenChip(id, value, decimals) {
    const chip = node("span", "tok", tokenText(id));
    chip.title = fmt(value, decimals) + "  (id " + id + ")";
    return chip;
  }

  // Python's str.strip() then str.casefold(), from tables written by the exporter.
  function normalize(text) {
    const strip = state.meta.strip;
    let a = 0;
    let b = text.length;
    while (a < b && strip.includes(text[a])) a++;
    while (b > a && strip.includes(text[b - 1])) b--;
    let out = "";
    for (const ch of text.slice(a, b)) out += fold.has(ch) ? fold.get(ch) : ch;
    return out;
  }

  // 32-bit FNV-1a over UTF-16 code units (conceptvec.atlas.html.fnv1a).
  function fnv1a(text) {
    let h = 0x811c9dc5;
    for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193) >>> 0;
    return h;
  }

  // ------------------------------------------------------------------ neuron cards
  function card(page, index, focusIndex) {
    const row = index - page.start;
    const c = node("article", "card" + (index === focusIndex ? " focus" : ""));
    c.id = "n-" + index;
    c.dataset.neuron = neuronName(state.layer, index);
    const h = node("h3", null, neuronName(state.layer, index));
    h.append(node("span", "matrix", state.matrix));
    c.append(h, tokenRow("top", page, page.top_ids, page.top, row), tokenRow("bottom", page, page.bottom_ids, page.bottom, row));
    return c;
  }

  function tokenRow(label, page, ids, values, row) {
    const p = node("p", "tokens " + label);
    p.append(node("span", "label", label));
    for (let j = row * page.k; j < (row + 1) * page.k; j++) p.append(tokenChip(ids[j], values[j], page.decimals));
    return p;
  }

  async function showPage() {
    const seq = ++pageSeq;
    const meta = state.meta;
    const shard = "L" + pad(state.layer, 3) + "." + state.matrix;
    updateNav();
    writeHash();
    if (!meta.shards.includes(shard)) {
      $("cards").replaceChildren(node("p", null, "this atlas has no " + state.matrix + " matrix for layer " + state.layer));
      return;
    }
    const page = await data(pageName(state.layer, state.matrix, state.page));
    const acts = meta.activations && meta.activations.layers.includes(state.layer) ? await data("acts/L" + pad(state.layer, 3) + ".p" + pad(state.page, 3)) : null;
    await loadTokens(page.top_ids.concat(page.bottom_ids, acts ? exemplarIds(acts) : []));
    if (seq !== pageSeq) return;
    const cards = document.createDocumentFragment();
    for (let i = page.start; i < page.start + page.count; i++) {
      const c = card(page, i, state.focus);
      if (acts) c.append(firesOn(acts, i - acts.start));
      cards.append(c);
    }
    $("cards").replaceChildren(cards);
    const focused = state.focus === null ? null : $("n-" + state.focus);
    if (focused) focused.scrollIntoView({ block: "center" });
  }

  // ------------------------------------------------- what a neuron fires on (with a corpus)
  const EXEMPLARS_SHOWN = 5; // per side; hover a token for its activation
  // An exemplar is [value, text, position, centre, n, ids x n, values x n] (html_acts.py).
  function exemplarIds(acts) {
    const ids = [];
    for (const side of [acts.top, acts.bottom]) for (const list of side) for (const e of list) for (let j = 0; j < e[4]; j++) ids.push(e[5 + j]);
    return ids;
  }

  function firesOn(acts, row) {
    const box = node("div", "acts");
    const [mean, std, above, below] = acts.stats[row];
    const t = state.meta.activations.threshold;
    const pct = (x) => (100 * x).toFixed(2) + "%";
    box.append(node("p", "stats", "fires on: mean " + mean.toFixed(3) + ", std " + std.toFixed(3) + ", " + pct(above) + " above +" + t + ", " + pct(below) + " below \u2212" + t));
    const scale = Math.max(1e-9, ...[...acts.top[row], ...acts.bottom[row]].map((e) => Math.abs(e[0])));
    for (const [label, list] of [["highest", acts.top[row]], ["lowest", acts.bottom[row]]]) {
      for (const e of list.slice(0, EXEMPLARS_SHOWN)) {
        const p = node("p", "ex " + label);
        const v = e[0] / 10 ** acts.decimals;
        p.append(node("span", "val " + (v < 0 ? "neg" : "pos"), (v < 0 ? "\u2212" : "+") + Math.abs(v).toFixed(3)));
        const n = e[4];
        for (let j = 0; j < n; j++) {
          const a = e[5 + n + j];
          const tok = node("span", "ctx" + (j === e[3] ? " fire" : ""), tokenText(e[5 + j]).replace(/^"|"$/g, ""));
          const alpha = Math.min(1, Math.abs(a) / scale).toFixed(2);
          tok.style.background = a < 0 ? "rgba(37,99,235," + alpha + ")" : "rgba(220,38,38," + alpha + ")";
          tok.title = (a / 10 ** acts.decimals).toFixed(3) + "  (text " + e[1] + ", position " + (e[2] - e[3] + j) + ")";
          p.append(tok);
        }
        box.append(p);
      }
    }
    return box;
  }

  function updateNav() {
    $("layer").value = String(state.layer);
    $("matrix").value = state.matrix;
    $("page").value = String(state.page + 1);
    $("prev").disabled = state.page <= 0;
    $("next").disabled = state.page >= state.meta.pages - 1;
  }

  function goTo(layer, matrix, page, focus) {
    state.layer = layer;
    state.matrix = matrix;
    state.page = Number.isFinite(page) ? Math.max(0, Math.min(state.meta.pages - 1, Math.floor(page))) : 0;
    state.focus = focus;
    return showPage();
  }

  function openNeuron(layer, matrix, index) {
    const meta = state.meta;
    if (!meta.layers.includes(layer) || !meta.matrices.includes(matrix) || !(index >= 0 && index < meta.dims.d_mlp)) {
      setStatus(neuronName(layer, index) + " " + matrix + " is not in this atlas (layers " + meta.layers[0] + "-" + meta.layers[meta.layers.length - 1] + ", neurons 0-" + (meta.dims.d_mlp - 1) + ", matrices " + meta.matrices.join(", ") + ")");
      return Promise.resolve();
    }
    return goTo(layer, matrix, Math.floor(index / meta.page_size), index);
  }

  // ------------------------------------------------------------------------ search
  const NEURON_ID = /^[Ll](\d+)[.Nn:/](\d+)(?:[\s.:/]+(up|gate|down))?$/;

  async function runSearch(text) {
    const seq = ++searchSeq;
    const query = text.trim();
    const id = NEURON_ID.exec(query);
    writeHash();
    if (id) {
      hideResults();
      setStatus("");
      return openNeuron(Number(id[1]), id[3] || state.matrix, Number(id[2]));
    }
    const key = normalize(text);
    if (!key) {
      hideResults();
      setStatus("");
      return;
    }
    const bucket = await data("search/" + pad(fnv1a(key) % state.meta.buckets, 4));
    if (seq !== searchSeq) return;
    const i = bucket.keys.indexOf(key);
    const hits = i < 0 ? [] : bucket.postings.slice(bucket.offsets[i] * 4, bucket.offsets[i + 1] * 4);
    found = { key, hits, decimals: bucket.decimals, shown: 0 };
    const n = hits.length / 4;
    const where = "among the top " + state.meta.search_depth + " tokens (ignoring case and spaces)";
    setStatus(n ? n + " neuron" + (n === 1 ? "" : "s") + " with a token reading \u201c" + key + "\u201d " + where : "no neuron has a token reading \u201c" + key + "\u201d " + where);
    const results = $("results");
    results.replaceChildren();
    results.hidden = n === 0;
    results.dataset.key = key; // what the list shows, and how many searches finished (for tests)
    if (n) {
      const table = node("table");
      const head = node("tr");
      for (const label of ["neuron", "matrix", "rank", "token", "score", "top tokens"]) head.append(node("th", null, label));
      table.append(node("thead"), node("tbody"));
      table.tHead.append(head);
      results.append(table);
      await showMoreResults(seq);
    }
    if (seq === searchSeq) results.dataset.searches = String(Number(results.dataset.searches || 0) + 1);
  }

  function hideResults() {
    found = null;
    $("results").hidden = true;
    $("results").replaceChildren();
  }

  async function showMoreResults(seq) {
    const { hits } = found;
    const from = found.shown;
    const to = Math.min(from + RESULTS_STEP, hits.length / 4);
    const meta = state.meta;
    const order = meta.matrix_order;
    const rows = [];
    for (let r = from; r < to; r++) {
      const code = hits[4 * r];
      const index = code % meta.dims.d_mlp;
      const shard = Math.floor(code / meta.dims.d_mlp);
      const layer = Math.floor(shard / order.length);
      const matrix = order[shard % order.length];
      rows.push({ layer, matrix, index, rank: hits[4 * r + 1], score: hits[4 * r + 3] });
    }
    const pages = await Promise.all(rows.map((h) => data(pageName(h.layer, h.matrix, Math.floor(h.index / meta.page_size)))));
    const ids = [];
    rows.forEach((h, i) => {
      const page = pages[i];
      h.tops = page.top_ids.slice((h.index - page.start) * page.k, (h.index - page.start) * page.k + Math.max(TOP_SHOWN, h.rank + 1));
      ids.push(...h.tops);
    });
    await loadTokens(ids);
    if (seq !== searchSeq) return;
    const body = $("results").querySelector("tbody");
    for (const h of rows) body.append(resultRow(h));
    found.shown = to;
    $("results").querySelector("button.more")?.remove();
    if (to < hits.length / 4) {
      const more = node("button", "more", "show " + Math.min(RESULTS_STEP, hits.length / 4 - to) + " more");
      more.type = "button";
      more.addEventListener("click", () => showMoreResults(searchSeq).catch(showError));
      $("results").append(more);
    }
  }

  function resultRow(h) {
    const tr = node("tr", "hit");
    const link = node("a", null, neuronName(h.layer, h.index));
    link.href = "#n=" + neuronName(h.layer, h.index) + "&m=" + h.matrix;
    link.addEventListener("click", (event) => {
      event.preventDefault();
      openNeuron(h.layer, h.matrix, h.index).catch(showError);
    });
    const first = node("td");
    first.append(link);
    const tops = node("td", "tops");
    h.tops.slice(0, TOP_SHOWN).forEach((id, j) => {
      const chip = node("span", "tok" + (j === h.rank ? " hit" : ""), tokenText(id));
      tops.append(chip);
    });
    tr.append(first, node("td", null, h.matrix), node("td", "num", String(h.rank + 1)), node("td", "token", tokenText(h.tops[h.rank])), node("td", "num", fmt(h.score, found.decimals)), tops);
    return tr;
  }

  // ------------------------------------------------------------------ URL and setup
  function writeHash() {
    const params = new URLSearchParams();
    const q = $("search").value.trim();
    if (q) params.set("q", q);
    params.set("l", String(state.layer));
    params.set("m", state.matrix);
    params.set("p", String(state.page + 1));
    if (state.focus !== null) params.set("n", neuronName(state.layer, state.focus));
    lastHash = "#" + params.toString();
    try {
      history.replaceState(null, "", lastHash);
    } catch (err) {
      lastHash = location.hash; // some browsers refuse history on file:// pages; keep working
    }
  }

  // Apply ?q=...&l=...&m=...&p=...&n=... from the URL (the hash wins over the query string).
  function applyUrl() {
    const params = new URLSearchParams(location.search);
    for (const [k, v] of new URLSearchParams(location.hash.slice(1))) params.set(k, v);
    const meta = state.meta;
    const matrix = meta.matrices.includes(params.get("m")) ? params.get("m") : state.matrix;
    const layer = meta.layers.includes(Number(params.get("l"))) ? Number(params.get("l")) : state.layer;
    const neuron = params.get("n") && NEURON_ID.exec(params.get("n"));
    const shown = neuron ? openNeuron(Number(neuron[1]), matrix, Number(neuron[2])) : goTo(layer, matrix, Number(params.get("p") || 1) - 1, null);
    shown.catch(showError);
    const q = params.get("q");
    if (q !== null && q !== $("search").value) {
      $("search").value = q;
      $("search").dispatchEvent(new Event("input")); // the same path as typing
    }
  }

  function setup(meta) {
    state.meta = meta;
    fold = new Map(Object.entries(meta.fold));
    state.layer = meta.layers[0];
    state.matrix = meta.matrices.includes("down") ? "down" : meta.matrices[0];
    const neurons = meta.layers.length * meta.dims.d_mlp;
    document.title = meta.model + " \u2014 conceptvec atlas";
    $("title").textContent = meta.model;
    $("facts").textContent = meta.layers.length + " layers \u00d7 " + meta.dims.d_mlp + " neurons = " + neurons.toLocaleString("en") + " neurons, " + meta.matrices.join("/") + ", top and bottom " + meta.k + " tokens, vocabulary " + meta.dims.vocab.toLocaleString("en") + (meta.complete ? "" : " (partial atlas)");
    for (const layer of meta.layers) $("layer").append(new Option(String(layer), String(layer)));
    for (const matrix of meta.matrices) $("matrix").append(new Option(matrix, matrix));
    $("page").max = String(meta.pages);
    $("pages").textContent = String(meta.pages);

    const nav = (fn) => () => fn().catch(showError);
    $("layer").addEventListener("change", nav(() => goTo(Number($("layer").value), state.matrix, 0, null)));
    $("matrix").addEventListener("change", nav(() => goTo(state.layer, $("matrix").value, state.page, state.focus)));
    $("prev").addEventListener("click", nav(() => goTo(state.layer, state.matrix, state.page - 1, null)));
    $("next").addEventListener("click", nav(() => goTo(state.layer, state.matrix, state.page + 1, null)));
    $("page").addEventListener("change", nav(() => goTo(state.layer, state.matrix, (Number($("page").value) || 1) - 1, null)));
    let timer = null;
    $("search").addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => runSearch($("search").value).catch(showError), DEBOUNCE_MS);
    });
    $("search-form").addEventListener("submit", (event) => {
      event.preventDefault();
      clearTimeout(timer);
      runSearch($("search").value).catch(showError);
    });
    window.addEventListener("hashchange", () => {
      if (location.hash !== lastHash) applyUrl();
    });
    applyUrl();
  }

  window.addEventListener("error", (event) => showError(event.message || event.error));
  window.addEventListener("unhandledrejection", (event) => showError(event.reason));
  data("meta").then(setup).catch(showError);
})();
