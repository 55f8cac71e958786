// The report's own script: draw the plotly figures, then the sample browser (search, filters, lineage).
// Data comes from <script type="application/json"> blocks; every record text is set with textContent.
(function () {
  "use strict";
  const readJSON = (id) => JSON.parse(document.getElementById(id).textContent);

  function drawFigures() {
    const figures = readJSON("report-figures");
    const config = { displaylogo: false, responsive: true };
    return Object.entries(figures).map(([id, spec]) =>
      Plotly.newPlot(document.getElementById(id), spec.data, spec.layout, config));
  }

  // -- the sample browser -------------------------------------------------------------------------
  const PAGE = 50;
  const el = (tag, attrs, text) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  };
  const short = (text, n) => (text && text.length > n ? text.slice(0, n - 1) + "…" : text || "");

  function initBrowser() {
    const root = document.getElementById("browser");
    if (!root) return;
    const table = readJSON("report-records");
    const rows = table.rows.map((r) => Object.fromEntries(table.columns.map((c, i) => [c, r[i]])));
    for (const r of rows) {
      r.status = r.dropped_at ? "dropped" : "kept";
      r.stages = [r.stage, ...(r.dropped_at ? r.dropped_at.split(", ") : [])];
      r.reasons = r.reason ? r.reason.split(", ") : [];
      r.haystack = [r.id, r.instruction, r.input, r.output, r.detail, r.producer, r.template_id]
        .filter(Boolean).join("\n").toLowerCase();
    }
    const byId = new Map(rows.map((r) => [r.id, r]));
    const children = new Map();
    for (const r of rows) for (const p of r.parent_ids || []) {
      if (!children.has(p)) children.set(p, []);
      children.get(p).push(r);
    }
    const filters = {
      kind: (r) => [r.kind], stage: (r) => r.stages, category: (r) => [r.category || "(none)"],
      status: (r) => [r.status], reason: (r) => (r.reasons.length ? r.reasons : ["(none)"]),
    };
    const selects = {};
    const bar = root.querySelector(".filters");
    for (const [name, values] of Object.entries(filters)) {
      const options = [...new Set(rows.flatMap(values))].filter(Boolean).sort();
      const select = el("select", { "data-filter": name, "aria-label": name });
      select.append(el("option", { value: "" }, `${name}: all`));
      for (const o of options) select.append(el("option", { value: o }, o));
      select.addEventListener("change", () => { state.page = 0; render(); });
      selects[name] = select;
      bar.append(select);
    }
    const search = root.querySelector("input[type=search]");
    search.addEventListener("input", () => { state.page = 0; render(); });
    const state = { page: 0, matched: rows };
    const body = root.querySelector("tbody");
    const count = root.querySelector(".count");
    const detail = root.querySelector(".detail");
    root.querySelector(".prev").addEventListener("click", () => { state.page = Math.max(0, state.page - 1); render(); });
    root.querySelector(".next").addEventListener("click", () => {
      if ((state.page + 1) * PAGE < state.matched.length) { state.page += 1; render(); }
    });

    function render() {
      const needle = search.value.trim().toLowerCase();
      state.matched = rows.filter((r) =>
        (!needle || r.haystack.includes(needle)) &&
        Object.entries(selects).every(([name, s]) => !s.value || filters[name](r).includes(s.value)));
      const start = state.page * PAGE;
      body.replaceChildren(...state.matched.slice(start, start + PAGE).map((r) => {
        const tr = el("tr", { class: r.status });
        tr.append(el("td", {}, r.status), el("td", {}, r.kind), el("td", {}, r.dropped_at || r.stage),
          el("td", {}, r.category || ""), el("td", {}, short(r.kind === "sample" ? r.output || r.instruction : r.instruction || r.output, 140)),
          el("td", {}, r.reason || ""));
        tr.addEventListener("click", () => show(r));
        return tr;
      }));
      const last = Math.min(start + PAGE, state.matched.length);
      count.textContent = `${state.matched.length} matching of ${rows.length} sampled records` +
        (state.matched.length ? ` — showing ${start + 1}–${last}` : "");
    }

    function link(id) {
      const target = byId.get(id);
      if (!target) return el("span", { class: "id missing", title: "not in this sample" }, id);
      const a = el("a", { href: "#", class: "id" }, `${id} (${target.kind})`);
      a.addEventListener("click", (e) => { e.preventDefault(); show(target); });
      return a;
    }

    function show(r) {
      detail.replaceChildren();
      detail.append(el("h3", {}, `${r.kind} ${r.id} — ${r.status}`));
      const dl = el("dl");
      const add = (label, value) => {
        if (value === null || value === undefined || value === "" ||
            (Array.isArray(value) && !value.length)) return;
        dl.append(el("dt", {}, label));
        const dd = el("dd");
        if (value instanceof Node) dd.append(value); else dd.textContent = String(value);
        dl.append(dd);
      };
      const ids = (list) => { const span = el("span"); for (const id of list) span.append(link(id), " "); return span; };
      add("instruction", r.instruction);
      add("input", r.input);
      add(r.kind === "task" ? "reference answer" : "output", r.output);
      add("dropped at", r.dropped_at);
      add("reason", r.reason);
      add("detail", r.detail);
      if (r.related_id) add("related to", ids([r.related_id]));
      add("similarity", r.similarity);
      add("made by stage", r.stage);
      add("category", r.category);
      add("source", r.source);
      add("producer", r.producer);
      add("template", r.template_id);
      add("round", r.round);
      add("run", r.run_id);
      add("generation params", r.gen_params);
      add("parents", (r.parent_ids || []).length ? ids(r.parent_ids) : null);
      const kids = children.get(r.id) || [];
      add("children (in sample)", kids.length ? ids(kids.map((k) => k.id)) : null);
      detail.append(dl);
      detail.scrollIntoView({ block: "nearest" });
    }
    render();
  }

  const draws = drawFigures();
  initBrowser();
  Promise.all(draws).then(() => {
    document.body.dataset.readyMs = performance.now().toFixed(1);
    document.body.classList.add("ready");
  });
})();
