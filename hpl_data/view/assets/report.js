"use strict";
// hpl-data view: renders the embedded payload. No network, no libraries; data text only ever
// reaches the page through textContent.
(function () {
  const D = JSON.parse(document.getElementById("hpl-data").textContent);
  const C = D.codes;
  const PAGE = 50;
  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      e.append(c instanceof Node ? c : String(c));
    }
    return e;
  }
  const fmt = (v, d = 3) => (v === null || v === undefined ? "–" : Number(v).toFixed(d));
  const table = (headers, rows, cls) => el("table", { class: cls },
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { class: typeof h === "object" ? h.cls : null }, typeof h === "object" ? h.t : h)))),
    el("tbody", {}, rows));
  const td = (v, cls) => el("td", { class: cls }, v);
  const num = (v) => el("td", { class: "num" }, v);

  // ---- text blocks: gzip+base64, decompressed on demand ---------------------------------
  const blockCache = new Map();
  function block(prefix, i) {
    const key = prefix + i;
    if (!blockCache.has(key)) {
      blockCache.set(key, (async () => {
        const node = document.getElementById(key);
        if (!node) throw new Error("missing text block " + key);
        const bin = atob(node.textContent);
        const bytes = new Uint8Array(bin.length);
        for (let j = 0; j < bin.length; j++) bytes[j] = bin.charCodeAt(j);
        const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
        return JSON.parse(await new Response(stream).text());
      })());
    }
    return blockCache.get(key);
  }
  async function rowTexts(prefix, index) {
    const b = await block(prefix, Math.floor(index / D.chunk));
    return { s: b.s, row: b.r[index % D.chunk] };
  }
  const message = (s, m) => ({ role: D.roles[m & 3], content: s[Math.floor(m / 4)] });

  // ---- protocol marks ----------------------------------------------------------------------
  const mismatchBySource = new Map();
  for (const m of D.protocol_mismatches) {
    for (const label of [m.run, m.reference]) mismatchBySource.set(label, m);
  }
  function protocolCell(src) {
    const p = src.protocol;
    if (!p) return td(el("span", { class: "muted" }, "not recorded"));
    const m = mismatchBySource.get(src.label);
    return el("td", { class: m ? "protocol differs" : "protocol" }, p.hash,
      m ? el("span", { class: "mark", title: m.text }, " ≠ " + m.parts.map((x) => x[0]).join(", ")) : null);
  }
  function renderMismatches() {
    const box = $("mismatches");
    for (const m of D.protocol_mismatches) {
      box.append(el("div", { class: "banner protocol-mismatch" },
        `Protocol differs for ${m.env}/${m.split}: ${m.run} vs ${m.reference}: ${m.text}`));
    }
  }

  // ---- charts --------------------------------------------------------------------------------
  function histogram(values, title, lo, hi, bins = 20) {
    const w = 300, hgt = 120, pad = 18;
    const counts = new Array(bins).fill(0);
    let n = 0;
    if (lo === undefined) { lo = 0; hi = 1; for (const v of values) if (v !== null) { lo = Math.min(lo, v); hi = Math.max(hi, v); } }
    if (!(hi > lo)) { hi = lo + 1; }
    for (const v of values) {
      if (v === null) continue;
      counts[Math.min(bins - 1, Math.max(0, Math.floor((v - lo) / (hi - lo) * bins)))]++; n++;
    }
    const top = Math.max(1, ...counts);
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("width", w); svg.setAttribute("height", hgt + pad);
    counts.forEach((c, i) => {
      const r = document.createElementNS(ns, "rect");
      const bh = (hgt - 4) * c / top;
      r.setAttribute("x", i * w / bins + 1); r.setAttribute("width", w / bins - 2);
      r.setAttribute("y", hgt - bh); r.setAttribute("height", bh); r.setAttribute("fill", "#2f6fb3");
      const t = document.createElementNS(ns, "title"); t.textContent = `${c}`; r.append(t);
      svg.append(r);
    });
    for (const [x, label, anchor] of [[0, fmt(lo, 2), "start"], [w, fmt(hi, 2), "end"]]) {
      const t = document.createElementNS(ns, "text");
      t.setAttribute("x", x); t.setAttribute("y", hgt + 13); t.setAttribute("text-anchor", anchor); t.textContent = label;
      svg.append(t);
    }
    return el("div", { class: "card" }, el("h3", {}, `${title} (n = ${n}, max bin ${top})`), svg);
  }

  // ---- overview ----------------------------------------------------------------------------
  function renderOverview() {
    const box = $("tab-overview");
    box.append(el("p", { class: "muted" }, `generated ${D.generated}`));
    box.append(el("h2", {}, "Sources"));
    box.append(table(["source", "kind", "env / split", "protocol", "settings"], D.sources.map((s) => {
      const cfg = s.config || {};
      const settings = s.kind === "gen"
        ? `expert ${cfg.expert}, policy ${cfg.policy}, levels ${cfg.levels}, segmenter ${cfg.segmenter}, M ${cfg.mc_rollouts}${cfg.mc_adaptive ? " (adaptive)" : ""}, limit ${cfg.limit}`
        : s.kind === "eval" ? `agent ${s.agent}` : "";
      return el("tr", {}, td(s.label, null), td(s.kind), td(`${s.env || "?"} / ${s.split || "?"}`), protocolCell(s), td(settings));
    })));
    box.append(el("h2", {}, "Tables"));
    box.append(table(["source", "table", { t: "rows", cls: "num" }, { t: "tasks", cls: "num" }, { t: "mean", cls: "num" }],
      D.tables.map((t) => el("tr", {}, td(D.sources[t.source].label), td(t.name), num(t.rows), num(t.tasks),
        num(t.mean === null ? "–" : `${t.stat} ${fmt(t.mean)}`)))));

    const P = D.pairs, E = D.episodes;
    const charts = el("div", { class: "cards" });
    C.level.forEach((name, code) => {
      const vals = []; for (let i = 0; i < P.level.length; i++) if (P.level[i] === code) vals.push(P.delta_r[i]);
      if (vals.length) charts.append(histogram(vals, `ΔR, ${name} pairs`, 0, 1));
    });
    C.role.forEach((name, code) => {
      const vals = []; for (let i = 0; i < E.role.length; i++) if (E.role[i] === code) vals.push(E.reward[i]);
      if (vals.length) charts.append(histogram(vals, `reward, ${name || "?"} episodes`));
    });
    if (charts.childElementCount) { box.append(el("h2", {}, "Reward and ΔR histograms"), charts); }

    // curriculum bucket matrix per MC level
    const matrices = el("div", { class: "cards" });
    C.level.forEach((name, code) => {
      const grid = [[0, 0, 0], [0, 0, 0], [0, 0, 0]]; let any = 0;
      for (let i = 0; i < P.level.length; i++) {
        if (P.level[i] !== code) continue;
        const b = C.bucket[P.bucket[i]];
        if (/^B[1-3][1-3]$/.test(b)) { grid[+b[1] - 1][+b[2] - 1]++; any++; }
      }
      if (!any) return;
      const top = Math.max(1, ...grid.flat());
      matrices.append(el("div", { class: "card" }, el("h3", {}, `${name} pairs: curriculum buckets`),
        el("table", { class: "matrix" }, el("tr", {}, el("th", {}, ""), ["ΔR1 (≥0.7)", "ΔR2 (≥0.4)", "ΔR3"].map((h) => el("th", {}, h))),
          grid.map((r, lb) => el("tr", {}, el("th", {}, `len${lb + 1}`), r.map((c) => el("td", {
            class: c ? null : "muted", style: `background: rgba(47,111,179,${(0.08 + 0.6 * c / top).toFixed(2)})`,
            title: `B${lb + 1}…: ${c} pairs`,
          }, c)))))));
    });
    if (matrices.childElementCount) box.append(el("h2", {}, "Curriculum buckets (rows: length, columns: ΔR)"), matrices);

    // MC rollouts per label
    const per = new Map();
    for (let i = 0; i < P.level.length; i++) {
      if (!P.nroll[i]) continue;
      const k = `${C.level[P.level[i]]}|${P.nroll[i]}`; per.set(k, (per.get(k) || 0) + 1);
    }
    const mcRows = [...per.entries()].sort().map(([k, n]) => { const [lv, m] = k.split("|"); return el("tr", {}, td(lv), num(m), num(n)); });
    const counterKeys = ["rollouts", "restores", "env_steps", "values_reused", "pairs_settled_early", "rollouts_saved",
      "step_no_alternative", "group_no_policy_play", "mc_failed_tasks"];
    const gens = D.sources.filter((s) => s.kind === "gen");
    if (mcRows.length || gens.length) {
      box.append(el("h2", {}, "Monte-Carlo rollouts per label"));
      const cards = el("div", { class: "cards" });
      if (mcRows.length) cards.append(el("div", { class: "card" }, table(["level", { t: "rollouts per side (M)", cls: "num" }, { t: "pairs", cls: "num" }], mcRows)));
      for (const g of gens) {
        const c = g.counters || {};
        const rows = counterKeys.filter((k) => c[k] !== undefined).map((k) => el("tr", {}, td(k), num(c[k])));
        if (rows.length) cards.append(el("div", { class: "card" }, el("h3", {}, g.label), table(["counter", { t: "value", cls: "num" }], rows)));
      }
      box.append(cards);
      box.append(el("h2", {}, "Expert filter"));
      box.append(table(["source", { t: "expert episodes", cls: "num" }, { t: "kept", cls: "num" }, { t: "filtered (below the bar)", cls: "num" },
        { t: "expert failed", cls: "num" }, { t: "policy episodes", cls: "num" }, { t: "policy failed", cls: "num" }],
      gens.map((g) => { const c = g.counters || {}; return el("tr", {}, td(g.label), num(c.expert_episodes ?? "–"), num(c.expert_kept ?? "–"),
        num(c.expert_filtered ?? "–"), num(c.expert_failed ?? "–"), num(c.policy_episodes ?? "–"), num(c.policy_failed ?? "–")); })));
    }
  }

  // ---- filters + pager shared by both browsers -------------------------------------------
  function options(select, labels, values) {
    select.append(el("option", { value: "" }, "all"));
    labels.forEach((l, i) => select.append(el("option", { value: values ? values[i] : i }, l === "" ? "(none)" : l)));
  }
  function usedCodes(column, names) {
    const seen = new Uint8Array(names.length);
    for (const v of column) seen[v] = 1;
    const idx = []; names.forEach((_, i) => { if (seen[i]) idx.push(i); });
    idx.sort((a, b) => (names[a] < names[b] ? -1 : 1));
    return idx;
  }
  function codeSelect(select, column, names) {
    const idx = usedCodes(column, names);
    options(select, idx.map((i) => names[i]), idx);
  }
  function pager(box, state, total, redraw) {
    box.replaceChildren();
    const pages = Math.max(1, Math.ceil(total / PAGE));
    state.page = Math.min(state.page, pages - 1);
    box.append(
      el("button", { onclick: () => { state.page = 0; redraw(); }, disabled: state.page === 0 }, "«"),
      el("button", { onclick: () => { state.page--; redraw(); }, disabled: state.page === 0 }, "‹ prev"),
      el("span", {}, ` page ${state.page + 1} of ${pages} `),
      el("button", { onclick: () => { state.page++; redraw(); }, disabled: state.page >= pages - 1 }, "next ›"),
      el("button", { onclick: () => { state.page = pages - 1; redraw(); }, disabled: state.page >= pages - 1 }, "»"));
  }
  const intOrNull = (v) => (v === "" ? null : Number(v));
  const floatOrNull = (v) => (v === "" || isNaN(Number(v)) ? null : Number(v));

  // ---- pair browser --------------------------------------------------------------------------
  const pairState = { page: 0, rows: null, selected: -1 };
  function filterPairs() {
    const P = D.pairs, n = P.level.length;
    const src = intOrNull($("pf-src").value), lv = intOrNull($("pf-level").value), bk = intOrNull($("pf-bucket").value);
    const ty = intOrNull($("pf-type").value), lo = floatOrNull($("pf-min").value), hi = floatOrNull($("pf-max").value);
    const task = $("pf-task").value.trim();
    const taskOk = task ? new Uint8Array(C.task_id.map((t) => (t.includes(task) ? 1 : 0))) : null;
    const out = new Int32Array(n); let k = 0;
    for (let i = 0; i < n; i++) {
      if (src !== null && P.src[i] !== src) continue;
      if (lv !== null && P.level[i] !== lv) continue;
      if (bk !== null && P.bucket[i] !== bk) continue;
      if (ty !== null && P.task_type[i] !== ty) continue;
      const d = P.delta_r[i];
      if (lo !== null && !(d >= lo)) continue;
      if (hi !== null && !(d <= hi)) continue;
      if (taskOk && !taskOk[P.task_id[i]]) continue;
      out[k++] = i;
    }
    let rows = out.subarray(0, k);
    const sort = $("pf-sort").value;
    if (sort !== "index") rows = Array.from(rows).sort((a, b) => (sort === "desc" ? P.delta_r[b] - P.delta_r[a] : P.delta_r[a] - P.delta_r[b]));
    pairState.rows = rows; pairState.page = 0;
    drawPairs();
  }
  function drawPairs() {
    const P = D.pairs, rows = pairState.rows;
    $("pair-count").textContent = rows.length.toLocaleString("en");
    const start = pairState.page * PAGE;
    const body = [];
    for (let j = start; j < Math.min(rows.length, start + PAGE); j++) {
      const i = rows[j];
      const std = (v) => (v ? ` ±${fmt(v, 2)}` : "");
      body.push(el("tr", { "data-index": i, class: i === pairState.selected ? "sel" : null, onclick: () => showPair(i) },
        num(i), td(C.level[P.level[i]]), td(C.task_id[P.task_id[i]]), td(C.task_type[P.task_type[i]]), td(C.bucket[P.bucket[i]] || "–"),
        num(fmt(P.delta_r[i])), num(fmt(P.cr[i]) + std(P.cstd[i])), num(fmt(P.rr[i]) + std(P.rstd[i])), num(P.nroll[i] || "–"),
        td(P.gstart[i] === null ? "–" : `${P.gstart[i]}+${P.glen[i]}`)));
    }
    $("pair-table").replaceChildren(...table(["#", "level", "task", "task type", "bucket", { t: "ΔR", cls: "num" }, { t: "chosen R", cls: "num" },
      { t: "rejected R", cls: "num" }, { t: "M", cls: "num" }, "steps"], body).childNodes);
    pager($("pair-pager"), pairState, rows.length, drawPairs);
  }
  function messageBox(m) {
    return el("div", { class: `msg ${m.role}` }, el("span", { class: "role" }, m.role), m.content);
  }
  function outcomesBox(label, mean, std, outcomes) {
    const list = outcomes && outcomes.length
      ? el("span", { class: "outcomes" }, outcomes.map((o) => el("span", {}, fmt(o, 2))))
      : el("span", { class: "muted" }, outcomes ? "exact (the episode ended)" : "not recorded");
    const spread = outcomes && outcomes.length ? ` spread ${fmt(Math.min(...outcomes), 2)}…${fmt(Math.max(...outcomes), 2)}` : "";
    return el("p", {}, el("b", {}, `${label}: `), `mean ${fmt(mean)}`, std ? ` (std ${fmt(std)})` : "", spread, el("br"), "rollouts: ", list);
  }
  // Marks row i of a browser as selected and fetches its texts; null if another row was opened meanwhile.
  async function openRow(state, kind, blockPrefix, i) {
    state.selected = i;
    for (const tr of $(`${kind}-table`).querySelectorAll("tr.sel")) tr.classList.remove("sel");
    const tr = $(`${kind}-table`).querySelector(`tr[data-index="${i}"]`); if (tr) tr.classList.add("sel");
    $(`${kind}-detail`).replaceChildren(el("p", { class: "muted" }, "loading…"));
    const texts = await rowTexts(blockPrefix, i);
    return state.selected === i ? texts : null;
  }
  async function showPair(i) {
    const texts = await openRow(pairState, "pair", "pc", i);
    if (!texts) return;
    const { s, row } = texts;
    const P = D.pairs, box = $("pair-detail");
    const [prompt, chosen, rejected, co, ro] = row;
    let shared = 0;
    while (shared < Math.min(chosen.length, rejected.length) && chosen[shared] === rejected[shared]) shared++;
    const prefix = [...prompt, ...chosen.slice(0, shared)].map((m) => message(s, m));
    const level = C.level[P.level[i]];
    const where = P.gstart[i] === null ? `after ${prefix.length} shared messages` : `expert step ${P.gstart[i]} (group of ${P.glen[i]})`;
    box.replaceChildren(
      el("h2", {}, `Pair #${i}: ${level}, task ${C.task_id[P.task_id[i]]} (${C.task_type[P.task_type[i]] || "?"}), ΔR ${fmt(P.delta_r[i])}`,
        C.bucket[P.bucket[i]] ? `, bucket ${C.bucket[P.bucket[i]]}` : ""),
      el("p", { class: "muted" }, `source ${D.sources[P.src[i]].label}`, C.segmenter[P.segmenter[i]] ? `, segmenter ${C.segmenter[P.segmenter[i]]}` : ""),
      el("details", { class: "prefix" }, el("summary", {}, `shared prefix: ${prefix.length} message${prefix.length === 1 ? "" : "s"} (click to expand)`), prefix.map(messageBox)),
      el("div", { class: "branch" }, `◆ branch point: ${where}`),
      el("div", { class: "sides" },
        el("div", { class: "side chosen" }, el("h3", { class: "good" }, "chosen"), outcomesBox("value", P.cr[i], P.cstd[i], co),
          chosen.slice(shared).map((m) => messageBox(message(s, m)))),
        el("div", { class: "side rejected" }, el("h3", { class: "bad" }, "rejected"), outcomesBox("value", P.rr[i], P.rstd[i], ro),
          rejected.slice(shared).map((m) => messageBox(message(s, m))))));
  }
  function initPairs() {
    const P = D.pairs;
    options($("pf-src"), D.sources.map((s) => s.label), D.sources.map((_, i) => i));
    codeSelect($("pf-level"), P.level, C.level);
    codeSelect($("pf-bucket"), P.bucket, C.bucket);
    codeSelect($("pf-type"), P.task_type, C.task_type);
    for (const id of ["pf-src", "pf-level", "pf-bucket", "pf-type", "pf-sort"]) $(id).addEventListener("change", filterPairs);
    for (const id of ["pf-min", "pf-max", "pf-task"]) $(id).addEventListener("input", filterPairs);
    filterPairs();
  }

  // ---- episode browser -----------------------------------------------------------------------
  const epState = { page: 0, rows: null, selected: -1 };
  function filterEpisodes() {
    const E = D.episodes, n = E.role.length;
    const src = intOrNull($("ef-src").value), role = intOrNull($("ef-role").value), ty = intOrNull($("ef-type").value);
    const outcome = $("ef-outcome").value, task = $("ef-task").value.trim();
    const out = new Int32Array(n); let k = 0;
    for (let i = 0; i < n; i++) {
      if (src !== null && E.src[i] !== src) continue;
      if (role !== null && E.role[i] !== role) continue;
      if (ty !== null && E.task_type[i] !== ty) continue;
      if (outcome === "won" && !E.won[i]) continue;
      if (outcome === "lost" && E.won[i]) continue;
      if (outcome === "failed" && !E.failed[i]) continue;
      if (task && !C.task_id[E.task_id[i]].includes(task)) continue;
      out[k++] = i;
    }
    epState.rows = out.subarray(0, k); epState.page = 0;
    drawEpisodes();
  }
  function drawEpisodes() {
    const E = D.episodes, rows = epState.rows;
    $("episode-count").textContent = rows.length.toLocaleString("en");
    const body = [];
    for (let j = epState.page * PAGE; j < Math.min(rows.length, (epState.page + 1) * PAGE); j++) {
      const i = rows[j];
      body.push(el("tr", { "data-index": i, class: i === epState.selected ? "sel" : null, onclick: () => showEpisode(i) },
        num(i), td(C.role[E.role[i]]), td(C.agent[E.agent[i]]), td(C.task_id[E.task_id[i]]), td(C.task_type[E.task_type[i]]),
        num(fmt(E.reward[i])), td(E.won[i] ? "✓" : "", "good"), num(E.steps[i]),
        td(C.stop_reason[E.stop_reason[i]] || "", E.failed[i] ? "bad" : null)));
    }
    $("episode-table").replaceChildren(...table(["#", "role", "agent", "task", "task type", { t: "reward", cls: "num" }, "won",
      { t: "steps", cls: "num" }, "stop"], body).childNodes);
    pager($("episode-pager"), epState, rows.length, drawEpisodes);
  }
  async function showEpisode(i) {
    const texts = await openRow(epState, "episode", "ec", i);
    if (!texts) return;
    const { s, row } = texts;
    const E = D.episodes, box = $("episode-detail");
    const [instr, actions, observations, valid, logprobs, entropies, error] = row;
    const stop = C.stop_reason[E.stop_reason[i]] || (E.truncated[i] ? "max_turns" : "");
    let reason = null;
    if (error >= 0) reason = el("div", { class: "banner" }, el("b", {}, "failed: "), s[error]);
    else if (!E.won[i]) reason = el("div", { class: "banner" }, el("b", {}, "not won: "), stop === "max_turns" ? `ran out of turns (max_turns), reward ${fmt(E.reward[i])}`
      : `episode ended${stop && stop !== "done" ? ` (${stop})` : ""} with reward ${fmt(E.reward[i])} < 1`);
    const hasLp = logprobs && logprobs.some((v) => v !== null), hasH = entropies && entropies.some((v) => v !== null);
    const rows = actions.map((a, t) => el("tr", {},
      num(t), el("td", { class: "obs" }, s[observations[t]] ?? ""), el("td", { class: valid && !valid[t] ? "invalid" : null }, s[a], valid && !valid[t] ? " (invalid)" : ""),
      hasLp ? num(fmt(logprobs[t])) : null, hasH ? num(fmt(entropies[t])) : null,
      num(t === actions.length - 1 ? fmt(E.reward[i]) : "0")));
    if (observations.length > actions.length) rows.push(el("tr", {}, num("end"), el("td", { class: "obs" }, s[observations[observations.length - 1]]), td(""), hasLp ? td("") : null, hasH ? td("") : null, num(fmt(E.reward[i]))));
    box.replaceChildren(
      el("h2", {}, `Episode #${i}: ${C.role[E.role[i]]} ${C.agent[E.agent[i]]} on ${C.task_id[E.task_id[i]]}, reward ${fmt(E.reward[i])}${E.won[i] ? " (won)" : ""}`),
      el("p", {}, el("b", {}, "instruction: "), s[instr]), reason || "",
      el("table", { class: "turns" }, el("thead", {}, el("tr", {}, el("th", {}, "turn"), el("th", {}, "observation"), el("th", {}, "action"),
        hasLp ? el("th", { class: "num" }, "log-prob") : null, hasH ? el("th", { class: "num" }, "entropy") : null, el("th", { class: "num" }, "reward"))),
      el("tbody", {}, rows)));
  }
  function initEpisodes() {
    const E = D.episodes;
    options($("ef-src"), D.sources.map((s) => s.label), D.sources.map((_, i) => i));
    codeSelect($("ef-role"), E.role, C.role);
    codeSelect($("ef-type"), E.task_type, C.task_type);
    for (const id of ["ef-src", "ef-role", "ef-type", "ef-outcome"]) $(id).addEventListener("change", filterEpisodes);
    $("ef-task").addEventListener("input", filterEpisodes);
    filterEpisodes();
  }

  // ---- eval runs -------------------------------------------------------------------------------
  function renderEval() {
    const box = $("tab-eval");
    const T = D.eval_table;
    if (!T) { box.append(el("p", { class: "muted" }, "No hpl-eval runs among the inputs.")); return; }
    box.append(el("h2", {}, "Agents (×100, the paper's Table 1 layout)"));
    box.append(table(["agent", ...T.headers.map((h) => ({ t: h, cls: "num" }))], T.rows.map((r) =>
      el("tr", {}, td(r.name), T.headers.map((h) => num(r.values[h] === null ? "–" : fmt(r.values[h], 1))))), "eval-table"));
    if (T.types.length) {
      box.append(el("h2", {}, "ALFWorld success by task type (×100, seen + unseen)"));
      box.append(table(["agent", ...T.types.map((t) => ({ t, cls: "num" }))], T.rows.map((r) =>
        el("tr", {}, td(r.name), T.types.map((t) => num(r.types[t] === undefined ? "–" : fmt(r.types[t], 1)))))));
    }
    box.append(el("h2", {}, "Runs"));
    const srcByLabel = new Map(D.sources.map((s) => [s.label, s]));
    box.append(table(["run", "env / split", "agent", { t: "episodes", cls: "num" }, { t: "avg reward", cls: "num" }, { t: "success", cls: "num" },
      { t: "avg steps", cls: "num" }, { t: "failed", cls: "num" }, "protocol"], D.evals.map((r) => {
      const src = srcByLabel.get(`${r.label}: ${r.env}/${r.split}`) || { protocol: r.protocol, label: r.label };
      return el("tr", {}, td(r.label), td(`${r.env} / ${r.split}`), td(r.agent), num(r.episodes), num(fmt(r.avg_reward, 4)),
        num(fmt(r.success_rate)), num(fmt(r.avg_steps, 2)), num(r.failed_episodes), protocolCell(src));
    })));
  }

  // ---- tabs ----------------------------------------------------------------------------------
  function initTabs() {
    const buttons = document.querySelectorAll("#tabs button");
    const show = (name) => {
      for (const b of buttons) b.classList.toggle("active", b.dataset.tab === name);
      for (const sec of document.querySelectorAll("main > section")) sec.hidden = sec.id !== `tab-${name}`;
    };
    for (const b of buttons) b.addEventListener("click", () => { show(b.dataset.tab); location.hash = b.dataset.tab; });
    const start = location.hash.slice(1);
    if (["overview", "pairs", "episodes", "eval"].includes(start)) show(start);
    else if (!D.pairs.level.length && D.eval_table) show("eval");
  }

  $("title").textContent = D.title;
  renderMismatches();
  renderOverview();
  initPairs();
  initEpisodes();
  renderEval();
  initTabs();
  window.hplReport = { data: D, firstRenderMs: performance.now(), showPair, showEpisode };
  document.documentElement.dataset.rendered = "1";
})();
