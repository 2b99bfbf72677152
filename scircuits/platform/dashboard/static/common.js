"use strict";
window.SC = window.SC || {};
SC.fmt = function (v, digits) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1e4 || a < 1e-3) return v.toExponential(2);
  return v.toPrecision(digits || 3);
};
SC.pct = function (v) { return v === null || v === undefined ? "–" : (100 * v).toPrecision(3) + "%"; };
SC.visible = function (t) { return t.replace(/ /g, "␣").replace(/\n/g, "⏎").replace(/\t/g, "⇥") || "∅"; };
SC.el = function (tag, attrs, children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const c of children || []) node.append(c);
  return node;
};
