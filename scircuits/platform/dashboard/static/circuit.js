"use strict";
// The circuit page: the graph (Cytoscape, preset layout: one column per site), a threshold slider
// that hides nodes by |effect|, and the same nodes and edges as tables. Data: window.SC_CIRCUIT.
(function () {
  const data = window.SC_CIRCUIT;
  const COLUMN = 220, ROW = 56, POS = "#1f5fa8", NEG = "#b3261e", LABELLED = 0.25;
  const byId = new Map(data.nodes.map(n => [n.id, n]));
  const biggestNode = Math.max(1e-30, ...data.nodes.filter(n => n.kind !== "metric").map(n => Math.abs(n.effect)));
  const biggestEdge = Math.max(1e-30, ...data.edges.map(e => Math.abs(e.weight)));

  const rows = {};
  const elements = data.sites.map(s => ({ group: "nodes", data: { id: "site:" + s.name, label: s.name }, classes: "site" }));
  for (const n of data.nodes) {
    const row = rows[n.column] = (rows[n.column] || 0) + 1;
    elements.push({
      group: "nodes",
      data: {
        id: n.id, label: n.label, href: n.href || "",
        parent: n.kind === "metric" ? undefined : "site:" + n.site,
        size: n.kind === "metric" ? 34 : 14 + 30 * Math.abs(n.effect) / biggestNode,
        color: n.kind === "metric" ? "#222" : (n.effect >= 0 ? POS : NEG),
      },
      position: { x: n.column * COLUMN, y: (row - 1) * ROW },
      classes: n.kind + (n.href ? " linked" : ""),
    });
  }
  for (const [k, e] of data.edges.entries()) {
    elements.push({
      group: "edges",
      data: {
        id: "e" + k, source: e.source, target: e.target, weight: e.weight, wlabel: SC.fmt(e.weight),
        width: 0.8 + 5 * Math.abs(e.weight) / biggestEdge, color: e.weight >= 0 ? POS : NEG,
      },
      // the strongest edges show their weight; every edge shows it under the pointer
      classes: Math.abs(e.weight) >= LABELLED * biggestEdge ? "labelled" : "",
    });
  }

  const container = document.getElementById("graph");
  const tallest = Math.max(1, ...Object.values(rows));
  container.style.height = Math.min(Math.max(320, tallest * ROW + 140), 900) + "px";
  const cy = cytoscape({
    container: container,
    elements: elements,
    layout: { name: "preset" },
    style: [
      { selector: "node[size]", style: {
        "label": "data(label)", "width": "data(size)", "height": "data(size)",
        "background-color": "data(color)", "border-width": 1, "border-color": "#111",
        "font-size": 10, "text-valign": "center", "text-halign": "right", "text-margin-x": 4 } },
      { selector: "node.error", style: { "shape": "round-rectangle" } },
      { selector: "node.metric", style: { "shape": "star" } },
      { selector: "node.linked", style: { "border-width": 2, "border-color": "#0b5cad" } },
      { selector: "node.site", style: {
        "label": "data(label)", "text-valign": "top", "text-halign": "center", "font-size": 12,
        "font-weight": "bold", "background-color": "#eef1f5", "border-width": 1, "border-color": "#c8ced6",
        "padding": 18, "shape": "round-rectangle" } },
      { selector: "edge", style: {
        "width": "data(width)", "line-color": "data(color)", "target-arrow-color": "data(color)",
        "target-arrow-shape": "triangle", "curve-style": "bezier", "opacity": 0.7 } },
      { selector: "edge.labelled, edge.pointed", style: {
        "label": "data(wlabel)", "font-size": 9, "text-rotation": "autorotate",
        "text-background-color": "#fff", "text-background-opacity": 0.85, "text-background-padding": 1 } },
      { selector: "edge.pointed", style: { "opacity": 1, "z-index": 10 } },
      { selector: ".hidden", style: { "display": "none" } },
    ],
  });
  cy.fit(undefined, 30);
  window.SC_CY = cy;  // for the browser tests
  cy.on("tap", "node.linked", evt => { window.location.href = evt.target.data("href"); });
  cy.on("mouseover", "node.linked", () => { container.style.cursor = "pointer"; });
  cy.on("mouseout", "node.linked", () => { container.style.cursor = ""; });
  cy.on("mouseover", "edge", evt => evt.target.addClass("pointed"));
  cy.on("mouseout", "edge", evt => evt.target.removeClass("pointed"));

  const nodeRow = new Map(), edgeRow = [];
  const nodeBody = document.querySelector("#nodes tbody");
  for (const n of data.nodes.filter(n => n.kind !== "metric")) {
    const name = n.href ? SC.el("a", { href: n.href, text: n.label }) : SC.el("span", { text: n.label, title: n.why || "" });
    const cls = n.effect >= 0 ? "num sign-pos" : "num sign-neg";
    const tr = SC.el("tr", { "data-id": n.id }, [
      SC.el("th", { scope: "row" }, [name]),
      SC.el("td", { text: n.site }),
      SC.el("td", { class: "num", text: String(n.rank) }),
      SC.el("td", { class: cls, text: SC.fmt(n.effect) }),
      SC.el("td", { class: "num", text: SC.fmt(n.exact_effect) }),
      SC.el("td", { class: "num", text: n.frequency === null ? "–" : SC.pct(n.frequency) }),
    ]);
    nodeRow.set(n.id, tr);
    nodeBody.append(tr);
  }
  // --positions kept: one row per node, one column per aligned position (index and token)
  const positionRow = new Map();
  if (data.positions) {
    document.getElementById("positions-section").hidden = false;
    const head = document.querySelector("#positions thead tr");
    head.append(SC.el("th", { scope: "col", text: "Node" }));
    for (const p of data.positions) {
      head.append(SC.el("th", { scope: "col", class: "num", "data-index": String(p.index), text: p.index + " " + p.label }));
    }
    const body = document.querySelector("#positions tbody");
    for (const n of data.nodes.filter(n => n.kind !== "metric" && n.by_position)) {
      const cells = n.by_position.map(v => SC.el("td", { class: v >= 0 ? "num sign-pos" : "num sign-neg", text: SC.fmt(v) }));
      const tr = SC.el("tr", { "data-id": n.id }, [SC.el("th", { scope: "row", text: n.label }), ...cells]);
      positionRow.set(n.id, tr);
      body.append(tr);
    }
  }
  const edgeBody = document.querySelector("#edges tbody");
  for (const e of data.edges) {
    const tr = SC.el("tr", {}, [
      SC.el("td", { text: byId.get(e.source).label }),
      SC.el("td", { text: byId.get(e.target).label }),
      SC.el("td", { class: e.weight >= 0 ? "num sign-pos" : "num sign-neg", text: SC.fmt(e.weight) }),
      SC.el("td", { class: "num", text: SC.fmt(e.exact) + (e.opposite_sign ? " (opposite sign)" : "") }),
    ]);
    edgeRow.push([e, tr]);
    edgeBody.append(tr);
  }

  // slider position k keeps the nodes whose |effect| is at least the k-th smallest one
  const steps = [...new Set(data.nodes.filter(n => n.kind !== "metric").map(n => Math.abs(n.effect)))].sort((a, b) => a - b);
  const slider = document.getElementById("threshold");
  slider.max = String(Math.max(0, steps.length - 1));
  function apply() {
    const threshold = steps.length ? steps[Number(slider.value)] : 0;
    let shown = 0;
    cy.batch(() => {
      for (const n of data.nodes) {
        if (n.kind === "metric") continue;
        const keep = Math.abs(n.effect) >= threshold;
        shown += keep;
        cy.getElementById(n.id).toggleClass("hidden", !keep);
        nodeRow.get(n.id).hidden = !keep;
        if (positionRow.has(n.id)) positionRow.get(n.id).hidden = !keep;
      }
      for (const s of data.sites) {
        const any = data.nodes.some(n => n.site === s.name && n.kind !== "metric" && Math.abs(n.effect) >= threshold);
        cy.getElementById("site:" + s.name).toggleClass("hidden", !any);
      }
    });
    for (const [e, tr] of edgeRow) {
      const visible = id => id === data.metric_id || Math.abs(byId.get(id).effect) >= threshold;
      tr.hidden = !(visible(e.source) && visible(e.target));
    }
    const total = data.nodes.length - 1;
    document.getElementById("threshold-value").textContent = SC.fmt(threshold);
    document.getElementById("shown").textContent = shown + " of " + total + " nodes shown";
    slider.setAttribute("aria-valuetext", "|effect| ≥ " + SC.fmt(threshold) + ", " + shown + " of " + total + " nodes");
  }
  slider.addEventListener("input", apply);
  apply();
})();
