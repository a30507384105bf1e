// The report's viewer. The run's data sits in one JSON block; a query's view (windows, reasoning,
// movement plots, final list) is built only when that query is opened, so a 100-query run with
// thousands of reasoning tokens per window opens as fast as a 10-query one. Plain DOM, no library:
// the page must work from file:// with no network. Text from the run is always set as text, never
// parsed as HTML (model output is arbitrary).
"use strict";
(function () {
  const R = JSON.parse(document.getElementById("report-data").textContent);
  const SVGNS = "http://www.w3.org/2000/svg";
  const M0 = R.measures[0];
  const PROBLEMS = ["no_answer", "truncated", "paper_fallback", "backend_error", "unknown"];
  const EXPLAIN = {
    ok: "the answer was a clean ranking inside <answer> tags",
    repaired: "the answer was usable after a repair (missing tags, duplicate or missing ids); see the raw answer",
    no_answer: "no ranking could be read; the window kept its input order",
    truncated: "the generation budget ran out while reasoning; the window kept its input order",
    forced: "the generation budget ran out while reasoning; the reasoning was cut at its last sentence and an answer forced (the forced answer below)",
    paper_fallback: "no answer: the passage numbers of the whole reply, first mention first (ReasonRank's own fallback, --on-truncation paper)",
    backend_error: "the model call failed; the window kept its input order",
  };
  const ROLES = {
    first: "the top of the first-stage list, ranked first",
    partition: "candidates below the top window, ranked against the pivot (placed first): those above it compete again",
    recursion: "those that beat the pivot (with any held back), ranked again to settle the top",
  };
  const byQid = new Map(R.queries.map((q, i) => [q.qid, Object.assign(q, { index: i })]));

  // -- helpers ----------------------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
    }
    for (const c of children.flat(Infinity)) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
    return e;
  }
  function svg(tag, attrs, ...children) {
    const e = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
    return e;
  }
  const pct = (v) => (v === null || v === undefined ? "–" : (100 * v).toFixed(2));
  const signed = (d) => (d === null ? "–" : (d > 1e-9 ? "+" : d < -1e-9 ? "−" : "±") + Math.abs(100 * d).toFixed(2));
  const trend = (d) => (d === null || Math.abs(d) < 1e-9 ? "same" : d > 0 ? "up" : "down");
  const delta = (q) => (q.before && q.after ? q.after[M0] - q.before[M0] : null);
  const num = (n) => Number(n).toLocaleString("en-US");
  const plural = (n, word) => `${num(n)} ${word}${n === 1 ? "" : "s"}`;
  const secs = (s) => (s < 10 ? s.toFixed(2) : s.toFixed(1)) + " s";
  const badge = (status) => el("span", { class: "badge " + status, title: EXPLAIN[status] || "" }, status.replace("_", " "));
  const qlink = (qid, w) => "#q=" + encodeURIComponent(qid) + (w === undefined ? "" : "&w=" + w);
  const doc = (d) => R.docs[d] || ["", ""];
  const grade = (q, d) => q.rel[d] || 0;
  // where a window sits: the sliding window's positions in the list; tdpart's role (its windows are not contiguous)
  const where = (w) => (w.role ? `${w.role} window` : `pass ${w.pass + 1}, positions ${w.start + 1}–${w.end}`);
  const offset = (w) => (w.role ? 0 : w.start);  // tdpart: window slots 1…n stand for positions

  // -- overview ---------------------------------------------------------------------------------
  function measuresTable() {
    const s = R.summary;
    if (!s.before) return el("p", { class: "note" }, "No relevance judgements were given, so there are no measures.");
    const rows = R.measures.map((m) => {
      const d = s.after[m] - s.before[m];
      return el("tr", {}, el("th", {}, m),
        el("td", { class: "num", "data-m": m, "data-run": "before" }, pct(s.before[m])),
        el("td", { class: "num", "data-m": m, "data-run": "after" }, pct(s.after[m])),
        el("td", { class: "num " + trend(d), "data-m": m, "data-run": "delta" }, signed(d)));
    });
    return el("table", { id: "measures" },
      el("thead", {}, el("tr", {}, el("th", {}, "measure (×100)"), el("th", { class: "num" }, "first stage"),
        el("th", { class: "num" }, "reranked"), el("th", { class: "num" }, "change"))),
      el("tbody", {}, rows),
      el("caption", { style: "caption-side: bottom; text-align: left; color: var(--muted); font-size: 12px" },
        `mean over the ${s.judged} judged queries of ${s.queries}, as reasonrank evaluate computes it`));
  }

  function statusTable() {
    const list = el("div", { id: "status-windows" });
    const rows = Object.entries(R.summary.status).sort((a, b) => b[1] - a[1]).map(([status, count]) =>
      el("tr", {}, el("td", {}, badge(status)),
        el("td", { class: "num" }, el("button", { class: "linklike", "data-status": status, onclick: () => showStatus(status, list) }, num(count))),
        el("td", { class: "note" }, EXPLAIN[status] || "")));
    return [el("table", { id: "status" }, el("thead", {}, el("tr", {}, el("th", {}, "parse status"), el("th", { class: "num" }, "windows"),
      el("th", {}, "meaning"))), el("tbody", {}, rows)),
      el("p", { class: "note" }, "Click a count to list its windows."), list];
  }

  function showStatus(status, list) {
    const hits = [];
    for (const q of R.queries) q.windows.forEach((w, i) => { if (w.status === status) hits.push([q, w, i]); });
    list.replaceChildren(el("h3", {}, `${hits.length} window(s) with status ${status}`),
      el("ul", { class: "hits" }, hits.map(([q, w, i]) => el("li", {}, el("a", { href: qlink(q.qid, i) },
        `query ${q.qid}, ${where(w)}`), " ", el("span", { class: "note" }, q.text.slice(0, 90))))));
  }

  function renderOverview() {
    const s = R.summary;
    const settings = el("table", { id: "settings" }, el("tbody", {}, R.settings.map(([k, v]) =>
      el("tr", {}, el("th", {}, k), el("td", {}, k === "command" ? el("code", {}, v) : v)))));
    const counts = `${num(s.queries)} ${s.queries === 1 ? "query" : "queries"}, ${plural(s.windows, "window")}`;
    document.getElementById("ov-settings").replaceChildren(settings);
    document.getElementById("ov-measures").replaceChildren(el("p", {}, counts), measuresTable());
    document.getElementById("ov-status").replaceChildren(...statusTable());
    if (R.warnings.length) {
      document.getElementById("ov-warnings").replaceChildren(el("div", { class: "warnings" }, el("b", {}, "Check these before trusting the figures:"),
        el("ul", {}, R.warnings.map((w) => el("li", {}, w)))));
    }
  }

  // -- navigation -------------------------------------------------------------------------------
  const nav = { text: "", status: "", change: "", sort: "run" };

  function matches(q) {
    const d = delta(q);
    if (nav.text && !(q.qid + " " + q.text).toLowerCase().includes(nav.text)) return false;
    if (nav.status === "problem" && !Object.keys(q.status).some((s) => PROBLEMS.includes(s))) return false;
    if (nav.status && nav.status !== "problem" && !q.status[nav.status]) return false;
    if (nav.change && trend(d) !== nav.change) return false;
    return true;
  }

  const SORTS = {
    run: (a, b) => a.index - b.index,
    worst: (a, b) => (delta(a) ?? 0) - (delta(b) ?? 0) || a.index - b.index,
    best: (a, b) => (delta(b) ?? 0) - (delta(a) ?? 0) || a.index - b.index,
    after: (a, b) => ((b.after || {})[M0] ?? -1) - ((a.after || {})[M0] ?? -1) || a.index - b.index,
  };

  function renderNav() {
    const shown = R.queries.filter(matches).sort(SORTS[nav.sort]);
    const current = route().q;
    document.getElementById("nav-count").textContent = `${shown.length} of ${R.queries.length} queries`;
    document.getElementById("nav-list").replaceChildren(...shown.map((q) => {
      const d = delta(q);
      const problems = Object.keys(q.status).filter((s) => PROBLEMS.includes(s));
      return el("li", {}, el("a", { href: qlink(q.qid), class: q.qid === current ? "current" : null, "data-qid": q.qid, title: q.text },
        el("span", { class: "qid" }, q.qid), el("span", { class: "qtext" }, q.text || "(no query text)"),
        el("span", { class: "num " + trend(d), title: `change in ${M0} (×100)` }, signed(d), problems.length ? el("span", { class: "down", title: "a window failed: " + problems.join(", ") }, " ⚠") : null)));
    }));
  }

  function setupNav() {
    const statuses = Object.keys(R.summary.status).sort();
    const select = (id, options, key) => {
      const s = el("select", { id, onchange: (e) => { nav[key] = e.target.value; renderNav(); } },
        options.map(([v, label]) => el("option", { value: v }, label)));
      return s;
    };
    const search = el("input", { id: "nav-search", type: "search", placeholder: "filter: query text or id",
      oninput: (e) => { nav.text = e.target.value.trim().toLowerCase(); renderNav(); } });
    document.getElementById("nav-controls").replaceChildren(search,
      select("nav-sort", [["run", "sort: run order"], ["worst", `sort: ${M0} change, worst first`],
        ["best", `sort: ${M0} change, best first`], ["after", `sort: ${M0} after reranking`]], "sort"),
      select("nav-status", [["", "any parse status"], ["problem", "a window failed (no answer, truncated, error)"], ...statuses.map((s) => [s, "a window " + s])], "status"),
      select("nav-change", [["", "any change"], ["up", `${M0} improved`], ["down", `${M0} got worse`], ["same", `${M0} unchanged`]], "change"),
      el("span", { id: "nav-count", class: "count" }));
    renderNav();
  }

  // -- one query --------------------------------------------------------------------------------
  function movement(q, w, wi) {
    // Each passage is one mark: a line from its position before the window to its position after (tdpart,
    // whose windows have no positions: from its slot in the window's input to its slot in the answer).
    const n = w.docids.length, row = 17, top = 18, x0 = 70, x1 = 236, height = top + n * row + 4, o = offset(w);
    const after = new Array(n);
    w.perm.forEach((src, j) => { after[src] = j; });
    const marks = w.docids.map((d, i) => {
      const g = grade(q, d), y0 = top + i * row + row / 2, y1 = top + after[i] * row + row / 2;
      const colour = g > 0 ? "#1a7f37" : "#8c959f";
      const [title] = doc(d);
      const ranks = w.role ? `\nfirst-stage rank ${q.firstRank.get(d) ?? "–"}, final rank ${q.finalRank.get(d) ?? "–"}` : "";
      return svg("g", { class: "mv", "data-doc": d, "data-grade": g, "data-passage": i + 1,
        "data-before": o + i + 1, "data-after": o + after[i] + 1 },
        svg("title", {}, `[${i + 1}] ${d}${title ? ": " + title : ""}\n${w.role ? "slot" : "position"} ${o + i + 1} → ${o + after[i] + 1}` +
          ranks + (g > 0 ? `\nrelevant (grade ${g})` : "")),
        svg("text", { x: x0 - 34, y: y0 + 4, "text-anchor": "end" }, w.role ? "" : String(o + i + 1)),
        svg("text", { x: x0 - 8, y: y0 + 4, "text-anchor": "end", style: "fill:#0969da" }, `[${i + 1}]`),
        svg("line", { x1: x0, y1: y0, x2: x1, y2: y1, stroke: colour, "stroke-width": g > 0 ? 2.2 : 1.1 }),
        svg("circle", { cx: x0, cy: y0, r: 3, fill: colour }),
        svg("circle", { cx: x1, cy: y1, r: g > 0 ? 5 : 3, fill: colour }),
        svg("text", { x: x1 + 9, y: y1 + 4 }, String(o + after[i] + 1) + (g > 0 ? ` · grade ${g}` : "")));
    });
    return svg("svg", { class: "movement", id: `w${wi}-mv`, width: 320, height, viewBox: `0 0 320 ${height}` },
      svg("text", { x: x0, y: 11, "text-anchor": "middle" }, w.role ? "input" : "before"),
      svg("text", { x: x1, y: 11, "text-anchor": "middle" }, w.role ? "answer" : "after"), marks);
  }

  function rankPlot(q) {
    // The query's whole move: each passage of the final top from its first-stage rank to its rank after
    // the windows (the replayed order, or the reranked run given), so tdpart's moves show too.
    const items = q.final.map(([d, first], i) => [d, first, i + 1]).filter(([, first]) => first);
    const n = Math.max(q.depth, ...items.map(([, first]) => first)), row = n > 30 ? 6 : 14, top = 18, x0 = 40, x1 = 200;
    const height = top + n * row + 4, y = (r) => top + (r - 1) * row + row / 2;
    const marks = items.map(([d, first, final]) => {
      const g = grade(q, d), colour = g > 0 ? "#1a7f37" : "#8c959f", [title] = doc(d);
      return svg("g", { class: "mv", "data-doc": d, "data-grade": g, "data-before": first, "data-after": final },
        svg("title", {}, `${d}${title ? ": " + title : ""}\nrank ${first} → ${final}` + (g > 0 ? `\nrelevant (grade ${g})` : "")),
        row >= 12 ? svg("text", { x: x0 - 8, y: y(first) + 4, "text-anchor": "end" }, String(first)) : null,
        svg("line", { x1: x0, y1: y(first), x2: x1, y2: y(final), stroke: colour, "stroke-width": g > 0 ? 2.2 : 1 }),
        row >= 12 || g > 0 ? svg("text", { x: x1 + 8, y: y(final) + 4 }, String(final) + (g > 0 ? ` · grade ${g}` : "")) : null);
    });
    const ends = row >= 12 ? [] : [1, n].map((r) => svg("text", { x: x0 - 8, y: y(r) + 4, "text-anchor": "end" }, String(r)));
    return svg("svg", { class: "movement", id: "q-mv", width: 320, height, viewBox: `0 0 320 ${height}` },
      svg("text", { x: x0, y: 11, "text-anchor": "middle" }, "first stage"),
      svg("text", { x: x1, y: 11, "text-anchor": "middle" }, "reranked"), ends, marks);
  }

  function passageList(q, w, wi) {
    return el("ol", { class: "passages" }, w.perm.map((src, j) => {
      const d = w.docids[src], g = grade(q, d), [title] = doc(d);
      return el("li", { id: `w${wi}-p${src + 1}` }, el("span", { class: "pos" }, String(offset(w) + j + 1)),
        el("a", { class: "pid", "data-w": wi, "data-p": src + 1, title: "highlight this passage" }, `[${src + 1}]`),
        el("span", { class: "title", title: `${d}${title ? ": " + title : ""}` }, g > 0 ? el("span", { class: "badge grade" }, "grade " + g) : null,
          " ", title || d));
    }));
  }

  function linkify(text, wi, size) {
    // [n] in the model's text names passage n of the window: link it to that passage
    const parts = [];
    let last = 0;
    for (const m of text.matchAll(/\[(\d{1,3})\]/g)) {
      const n = Number(m[1]);
      if (n < 1 || n > size) continue;
      parts.push(text.slice(last, m.index), el("a", { class: "pid", "data-w": wi, "data-p": n }, m[0]));
      last = m.index + m[0].length;
    }
    parts.push(text.slice(last));
    return parts;
  }

  function renderWindow(q, w, wi) {
    const n = w.docids.length;
    const reasoning = w.reasoning
      ? el("details", { class: "reasoning full", open: w.reasoning.length < 2500 ? "" : null },
        el("summary", {}, `Reasoning (${num(w.reasoning.length)} characters; [n] links to the passage)`),
        el("div", { class: "text" }, linkify(w.reasoning, wi, n)))
      : el("p", { class: "note full reasoning-empty" }, "The model wrote no reasoning for this window (no <think> block).");
    const answerNote = w.reasoning && w.answer.includes("…") ? " (the reasoning above is shown as …)" : "";
    const out = w.perm.map((src) => w.docids[src]);
    const ids = w.role ? el("div", { class: "full docids" },
      el("div", {}, el("b", {}, "input: "), el("span", { "data-ids": "input" }, w.docids.join(" "))),
      el("div", {}, el("b", {}, "answer: "), el("span", { "data-ids": "output" }, out.join(" ")))) : null;
    const forced = w.forced ? el("div", { class: "full forced-answer" },
      el("b", {}, "Forced answer"),
      el("span", { class: "note" }, ` (the reasoning cut at its last complete sentence, then </think><answer>: ${num(w.forced.pt)} prompt + ` +
        `${num(w.forced.ct)} generated tokens, ${secs(w.forced.sec)})` + (w.forced.error ? `; no answer: ${w.forced.error}` : "")),
      el("pre", { class: "answer" }, "…" + w.forced.prefix.slice(-120), el("b", {}, w.forced.answer ? linkify(w.forced.answer, wi, n) : "(empty)"))) : null;
    const notes = [
      w.retried ? el("span", { class: "down", title: "the run asked this window again; the answer it used is the next window" }, "failed, asked again") : null,
      w.shared ? el("span", { class: "note", title: "the same prompt was answered once, for either method" }, `answer recorded by a ${w.shared} window`) : null];
    return el("section", { class: "window" + (w.retried ? " retried" : ""), id: `w${wi}`, "data-index": wi, "data-role": w.role || null },
      el("div", { class: "head" }, el("b", {}, `window ${wi + 1} of ${q.windows.length}`),
        el("span", { class: "where", title: w.role ? ROLES[w.role] || "" : "" }, where(w)), badge(w.status), notes,
        el("span", {}, `${num(w.pt)} prompt + ${num(w.ct)} generated tokens`), el("span", {}, secs(w.sec)),
        el("span", { class: "note", title: "prompt hash (the journal's key)" }, w.hash.slice(0, 10))),
      el("div", { class: "body" }, ids, movement(q, w, wi),
        el("div", {}, el("div", { class: "note" }, `after this window (${w.role ? "slot in the answer" : "position"}, [id in the prompt], title):`),
          passageList(q, w, wi)),
      reasoning,
      el("div", { class: "full" }, el("b", {}, "Raw answer"), el("span", { class: "note" }, answerNote),
        el("pre", { class: "answer" }, w.answer ? linkify(w.answer, wi, n) : "(empty)")), forced));
  }

  function finalTable(q) {
    const excluded = new Set(q.excluded);
    const rows = q.final.map(([d, first], i) => {
      const g = grade(q, d), [title, snippet] = doc(d), moved = first ? first - (i + 1) : null;
      return el("tr", { class: excluded.has(d) ? "excluded" : null, title: excluded.has(d) ? "excluded from evaluation (BRIGHT excluded_ids)" : null },
        el("td", { class: "num" }, String(i + 1)),
        el("td", { class: "num " + (moved === null ? "" : trend(moved)) }, moved === null ? "new" : moved ? (moved > 0 ? "↑" : "↓") + Math.abs(moved) : "="),
        el("td", { class: "num" }, first ? String(first) : "–"),
        el("td", {}, g > 0 ? el("span", { class: "badge grade" }, String(g)) : ""),
        el("td", { class: "snippet" }, el("b", {}, title || d), title ? ` (${d}) ` : " ", snippet));
    });
    return el("table", { class: "final" }, el("thead", {}, el("tr", {}, el("th", { class: "num" }, "rank"),
      el("th", { class: "num" }, "moved"), el("th", { class: "num" }, "first stage"), el("th", {}, "grade"), el("th", {}, "passage"))),
    el("tbody", {}, rows));
  }

  function queryMeasures(q) {
    if (!q.before) return el("p", { class: "note" }, "This query has no relevance judgements.");
    return el("table", { class: "qmeasures" }, el("tbody", {}, R.measures.map((m) => {
      const d = q.after[m] - q.before[m];
      return el("tr", {}, el("th", {}, m), el("td", { class: "num" }, pct(q.before[m])), el("td", {}, "→"),
        el("td", { class: "num", "data-m": m }, pct(q.after[m])), el("td", { class: "num " + trend(d) }, signed(d)));
    })));
  }

  function renderQuery(q) {
    const relevant = Object.keys(q.rel).length, found = q.final.filter(([d]) => q.rel[d]).length;
    const notes = [];
    if (q.skipped) notes.push(`${q.skipped} journal window(s) of this query did not fit its list and are not shown.`);
    if (q.missing) notes.push(`${q.missing} window(s) the run needed are not in the journal; each was taken as keeping its input order.`);
    if (q.differs) notes.push("The reranked run orders this query differently from what its windows produce; the final list is the run's.");
    const view = el("article", { id: "query-view", "data-qid": q.qid },
      el("h2", {}, `Query ${q.qid}`), el("p", { class: "qtext-full" }, q.text || el("span", { class: "note" }, "(no query text: give the collection)")),
      notes.length ? el("div", { class: "warnings" }, notes.map((t) => el("div", {}, t))) : null,
      el("div", { class: "grid2" }, queryMeasures(q), el("div", {},
        el("div", {}, Object.entries(q.status).map(([s, c]) => [badge(s), ` ×${c} `])),
        el("div", {}, `${plural(q.windows.length, "window")}, ${num(q.pt)} prompt + ${num(q.ct)} generated tokens, ${secs(q.seconds)}`),
        el("div", {}, `${found} of ${relevant} judged-relevant passages are in the top ${q.depth}`))),
      el("h3", {}, `From the first stage to the final top ${q.depth}`),
      el("p", { class: "note" }, "Lines go from a passage's first-stage rank to its rank after reranking; green marks passages judged relevant."),
      rankPlot(q),
      el("h3", {}, "Windows, in the order the model saw them"),
      el("p", { class: "note" }, q.method === "tdpart"
        ? "Top-down partitioning ranks the top window first, takes the passage at rank k as the pivot, ranks every other " +
          "candidate in windows that start with the pivot, and ranks those that beat it again. Its windows are not " +
          "contiguous stretches of the list: each shows its role, the doc ids it was given and those of its answer, and lines from " +
          "a passage's slot in the window to its slot in the answer; green marks passages judged relevant."
        : "The sliding window starts at the bottom of the list and moves up, so a passage can climb several windows. " +
          "Lines go from a passage's position before the window to its position after; green marks passages judged relevant."),
      q.windows.map((w, wi) => renderWindow(q, w, wi)),
      el("h3", {}, `Final top ${q.depth}`), finalTable(q));
    return view;
  }

  function flash(node) {
    node.classList.remove("flash");
    void node.offsetWidth;  // restart the highlight when the same passage is clicked twice
    node.classList.add("flash");
    setTimeout(() => node.classList.remove("flash"), 1600);
  }

  function onPassageClick(e) {
    const a = e.target.closest("a.pid");
    if (!a) return;
    e.preventDefault();
    const row = document.getElementById(`w${a.dataset.w}-p${a.dataset.p}`);
    if (row) { row.scrollIntoView({ block: "center" }); flash(row); }
  }

  // -- routing: the URL fragment says what is shown, so a link to a query can be shared ---------------
  function route() {
    const params = new URLSearchParams(location.hash.slice(1));
    return { q: params.get("q"), w: params.get("w") };
  }

  function show() {
    const { q: qid, w } = route();
    const q = qid === null ? null : byQid.get(qid);
    document.getElementById("overview").hidden = q !== null && q !== undefined;
    const holder = document.getElementById("query");
    holder.hidden = !q;
    document.getElementById("ov-missing").replaceChildren(qid !== null && !q
      ? el("div", { class: "warnings" }, `This report has no query ${qid}: the link is for another run.`) : "");
    if (q) {
      if (!q.finalRank) {
        q.firstRank = new Map(q.final.map(([d, first]) => [d, first]));
        q.finalRank = new Map(q.final.map(([d], i) => [d, i + 1]));
      }
      if (holder.dataset.qid !== q.qid) { holder.replaceChildren(renderQuery(q)); holder.dataset.qid = q.qid; }
      const target = w !== null ? document.getElementById("w" + w) : null;
      if (target) { target.scrollIntoView({ block: "start" }); flash(target); } else window.scrollTo(0, 0);
      document.title = `Query ${q.qid} · ${R.title}`;
    } else {
      document.title = R.title;
    }
    for (const a of document.querySelectorAll("#nav-list a")) a.classList.toggle("current", Boolean(q) && a.dataset.qid === q.qid);
  }

  renderOverview();
  setupNav();
  document.getElementById("query").addEventListener("click", onPassageClick);
  window.addEventListener("hashchange", show);
  show();
  document.body.dataset.ready = "1";  // for tests and scripts: the page has rendered
})();
