"""HTML/CSS/JS of the report. Placeholders: %%TITLE%%, %%SUMMARY%%, %%PLOTS%%, %%DATA%%.

The script builds the DOM from the embedded JSON with `textContent` only (token strings are
untrusted text), so the file needs no escaping beyond the JSON itself. Cards are rendered on
demand (the first rows of the index, and any row clicked): tens of thousands of token spans
for every feature at once would make a wide dictionary's report slow to open.
"""

TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>saeops analysis · %%TITLE%%</title>
<style>
:root { --hl: 255, 140, 0; --fg: #202124; --muted: #5f6368; --line: #dadce0; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg);
       margin: 0; background: #f8f9fa; }
header { background: #fff; border-bottom: 1px solid var(--line); padding: 16px 24px; }
h1 { font-size: 20px; margin: 0 0 10px; } h2 { font-size: 16px; margin: 0 0 8px; }
main { padding: 16px 24px; display: grid; grid-template-columns: 400px 1fr; gap: 20px; align-items: start; }
.facts { display: flex; flex-wrap: wrap; gap: 10px; }
.fact { background: #f1f3f4; border-radius: 6px; padding: 6px 12px; }
.fact b { display: block; font-size: 16px; } .fact span { color: var(--muted); font-size: 12px; }
.plots { display: flex; flex-wrap: wrap; gap: 8px; padding: 12px 24px 0; }
.plots figure { margin: 0; background: #fff; border: 1px solid var(--line); border-radius: 6px; }
.plots img { display: block; max-height: 260px; }
.panel { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 12px; }
#index-wrap { max-height: 1500px; overflow-y: auto; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th { position: sticky; top: 0; background: #fff; text-align: right; cursor: pointer; user-select: none;
     border-bottom: 2px solid var(--line); padding: 4px 6px; white-space: nowrap; }
th.sorted { color: #1a73e8; } th:first-child, td:first-child { text-align: left; }
td { text-align: right; padding: 3px 6px; border-bottom: 1px solid #f1f3f4; }
td.toks { text-align: left; color: var(--muted); max-width: 120px; overflow: hidden; text-overflow: ellipsis;
          white-space: nowrap; }
tr.row { cursor: pointer; } tr.row:hover { background: #e8f0fe; } tr.dead { color: #9aa0a6; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 14px; margin-bottom: 16px; }
.card h3 { margin: 0; font-size: 16px; } .stats { color: var(--muted); font-size: 12px; margin: 2px 0 8px; }
.cols { display: flex; gap: 18px; flex-wrap: wrap; align-items: flex-start; margin-bottom: 8px; }
.logits { font-size: 12px; } .logits div { margin: 2px 0; }
.chip { display: inline-block; border-radius: 4px; padding: 0 5px; margin: 1px 2px; font-family: ui-monospace, monospace;
        white-space: pre; }
.up .chip { background: #e6f4ea; color: #137333; } .down .chip { background: #fce8e6; color: #a50e0e; }
.ctx { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12.5px; white-space: pre-wrap;
       border-top: 1px solid #f1f3f4; padding: 3px 0; display: flex; gap: 8px; }
.ctx .val { color: var(--muted); min-width: 44px; text-align: right; flex: none; }
.tok { border-radius: 2px; } .tok.max { outline: 1px solid rgba(var(--hl), 1); }
.sub { font-size: 12px; color: var(--muted); margin: 8px 0 2px; text-transform: uppercase; letter-spacing: .04em; }
.weak .tok { opacity: .9; } .empty { color: var(--muted); font-style: italic; }
svg.hist rect { fill: #1a73e8; } svg.hist text { font-size: 9px; fill: var(--muted); }
</style></head>
<body>
<header><h1>%%TITLE%%</h1><div class="facts">%%SUMMARY%%</div></header>
<div class="plots">%%PLOTS%%</div>
<main>
<section class="panel"><h2>Feature index</h2><div id="index-wrap"><table id="index">
<thead><tr><th data-key="id">feature</th><th data-key="freq">frequency</th><th data-key="mean">mean</th>
<th data-key="max">max</th><th data-key="label">top tokens</th></tr></thead><tbody></tbody></table></div></section>
<section id="cards"></section>
</main>
<script type="application/json" id="data">%%DATA%%</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("data").textContent);
const VOCAB = DATA.vocab, FEATS = DATA.features, BY_ID = new Map(FEATS.map(f => [f.id, f]));
const INITIAL_CARDS = 8, HL = "255, 140, 0";  // highlight colour (also in CSS --hl)
let sortKey = "max", sortDesc = true;

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
const tokText = t => VOCAB[t] ?? "?";
const pct = f => (f * 100).toPrecision(3) + "%";
// Label of a feature in the index: its promoted output tokens, else its most common top token.
function label(f) {
  if (f.up) return f.up.slice(0, 3).map(([t]) => tokText(t).trim()).join(" ");
  const counts = new Map();
  for (const c of f.top) {
    const best = c.a.reduce((m, x) => (x[1] > m[1] ? x : m), [0, -1]);
    const s = tokText(c.t[best[0]]).trim();
    counts.set(s, (counts.get(s) || 0) + 1);
  }
  return [...counts.entries()].sort((a, b) => b[1] - a[1]).slice(0, 3).map(e => e[0]).join(" ");
}
for (const f of FEATS) f.label = label(f);

function renderIndex() {
  const body = document.querySelector("#index tbody");
  body.replaceChildren();
  const rows = [...FEATS].sort((a, b) => {
    const x = a[sortKey], y = b[sortKey];
    const c = typeof x === "string" ? x.localeCompare(y) : x - y;
    return sortDesc ? -c : c;
  });
  for (const f of rows) {
    const tr = el("tr", f.count ? "row" : "row dead");
    tr.dataset.feature = f.id;
    tr.append(el("td", "", "#" + f.id), el("td", "", pct(f.freq)), el("td", "", f.mean.toPrecision(3)),
              el("td", "", f.max.toPrecision(3)), el("td", "toks", f.label));
    tr.addEventListener("click", () => showCard(f.id));
    body.append(tr);
  }
  for (const th of document.querySelectorAll("#index th"))
    th.classList.toggle("sorted", th.dataset.key === sortKey);
  return rows;
}

function histogram(f) {
  const w = 220, h = 64, n = f.hist.length, peak = Math.max(1, ...f.hist);
  const ns = "http://www.w3.org/2000/svg", svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "hist"); svg.setAttribute("width", w); svg.setAttribute("height", h + 14);
  f.hist.forEach((c, i) => {
    const r = document.createElementNS(ns, "rect"), bh = c ? Math.max(1, (h * c) / peak) : 0;
    r.setAttribute("x", (i * w) / n); r.setAttribute("width", w / n - 1);
    r.setAttribute("y", h - bh); r.setAttribute("height", bh);
    const tip = document.createElementNS(ns, "title");
    tip.textContent = `${DATA.edges[i].toPrecision(2)}–${DATA.edges[i + 1].toPrecision(2)}: ${c}`;
    r.append(tip); svg.append(r);
  });
  [[0, "start"], [n, "end"]].forEach(([i, anchor]) => {
    const t = document.createElementNS(ns, "text");
    t.setAttribute("x", (i * w) / n); t.setAttribute("y", h + 11); t.setAttribute("text-anchor", anchor);
    t.textContent = DATA.edges[i].toPrecision(2); svg.append(t);
  });
  return svg;
}

// One context line: background alpha ∝ activation / the feature's max; hover shows the value.
function contextLine(c, scale) {
  const line = el("div", "ctx"), text = el("span");
  line.append(el("span", "val", c.v.toPrecision(3)), text);
  const acts = new Map(c.a);
  c.t.forEach((t, i) => {
    const a = acts.get(i) || 0, span = el("span", "tok", tokText(t));
    span.dataset.act = a;
    span.title = `${JSON.stringify(tokText(t))}  activation ${a.toPrecision(3)}`;
    if (a > 0) {
      span.style.backgroundColor = `rgba(${HL}, ${Math.min(1, 0.15 + 0.85 * a / scale).toFixed(3)})`;
      if (a === c.v) span.classList.add("max");
    }
    text.append(span);
  });
  return line;
}

function card(f) {
  const box = el("article", "card");
  box.id = "feature-" + f.id;
  box.append(el("h3", "", "Feature #" + f.id),
             el("div", "stats", `frequency ${pct(f.freq)} · fired on ${f.count} tokens · mean ${f.mean} · max ${f.max}`));
  const cols = el("div", "cols"), histBox = el("div");
  histBox.append(el("div", "sub", "activation histogram"), histogram(f));
  cols.append(histBox);
  if (f.up) {
    const lg = el("div", "logits");
    for (const [key, name] of [["up", "promotes"], ["down", "suppresses"]]) {
      const row = el("div", key);
      row.append(el("div", "sub", name));
      for (const [t, v] of f[key]) { const chip = el("span", "chip", tokText(t)); chip.title = v; row.append(chip); }
      lg.append(row);
    }
    cols.append(lg);
  }
  box.append(cols);
  const scale = f.max || 1;
  for (const [key, name] of [["top", "top activations"], ["weak", "weaker activations (random sample)"]]) {
    const sec = el("div", key);
    sec.append(el("div", "sub", name));
    if (!f[key].length) sec.append(el("div", "empty", "none"));
    for (const c of f[key]) sec.append(contextLine(c, scale));
    box.append(sec);
  }
  return box;
}

function showCard(id) {
  const cards = document.getElementById("cards"), old = document.getElementById("feature-" + id);
  if (old) old.remove();
  const c = card(BY_ID.get(id));
  cards.prepend(c);
  c.scrollIntoView({block: "start"});
}

function renderCards(rows) {
  document.getElementById("cards").replaceChildren(
    ...rows.filter(f => f.count).slice(0, INITIAL_CARDS).map(card));
}

for (const th of document.querySelectorAll("#index th")) {
  th.addEventListener("click", () => {
    sortDesc = th.dataset.key === sortKey ? !sortDesc : th.dataset.key !== "id";
    sortKey = th.dataset.key;
    renderCards(renderIndex());
  });
}
renderCards(renderIndex());
document.body.dataset.ready = "1";
</script>
</body></html>
"""
