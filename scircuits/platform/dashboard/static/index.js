(function () {
  const data = window.SC_INDEX;
  const table = document.getElementById("features");
  const body = table.querySelector("tbody");
  const search = document.getElementById("search");
  const ablatedOnly = document.getElementById("ablated-only");
  const count = document.getElementById("count");
  const pageLabel = document.getElementById("page");
  const prev = document.getElementById("prev"), next = document.getElementById("next");
  const PAGE = 100;
  const cols = data.columns;  // [{key, label, numeric}]
  const at = Object.fromEntries(cols.map((c, i) => [c.key, i]));
  let rows = data.rows, sortKey = null, sortDir = 1, page = 0;

  function value(row, key) { return row[at[key]]; }
  function compare(a, b) {
    const x = value(a, sortKey), y = value(b, sortKey);
    const xn = x === null || x === undefined, yn = y === null || y === undefined;
    if (xn || yn) return xn === yn ? a[0] - b[0] : (xn ? 1 : -1);  // missing values last
    if (typeof x === "string") return sortDir * x.localeCompare(y) || a[0] - b[0];
    return sortDir * (x - y) || a[0] - b[0];
  }
  function filtered() {
    const q = search.value.trim().toLowerCase();
    return data.rows.filter(r => {
      if (ablatedOnly.checked && value(r, "exact") === null) return false;
      if (!q) return true;
      return String(r[0]) === q || value(r, "summary").toLowerCase().includes(q);
    });
  }
  function cell(row, col) {
    const v = value(row, col.key);
    if (col.key === "id") {
      return SC.el("th", {scope: "row"}, [SC.el("a", {href: "features/" + v + ".html", text: "Feature " + v})]);
    }
    let text;
    if (col.key === "interval") text = v ? "[" + SC.fmt(v[0]) + ", " + SC.fmt(v[1]) + "]" : "–";
    else if (col.key === "frequency") text = SC.pct(v);
    else if (col.key === "rank") text = v === null ? "–" : String(v);
    else if (col.numeric) text = SC.fmt(v);
    else text = v;
    return SC.el("td", {class: col.numeric ? "num" : null, text: text});
  }
  function render() {
    rows = filtered();
    if (sortKey) rows.sort(compare);
    const pages = Math.max(1, Math.ceil(rows.length / PAGE));
    page = Math.min(page, pages - 1);
    body.replaceChildren(...rows.slice(page * PAGE, (page + 1) * PAGE).map(
      r => SC.el("tr", {"data-id": r[0]}, cols.map(c => cell(r, c)))));
    count.textContent = rows.length + " of " + data.rows.length + " features";
    pageLabel.textContent = "Page " + (page + 1) + " of " + pages;
    prev.disabled = page === 0; next.disabled = page >= pages - 1;
  }
  for (const th of table.querySelectorAll("thead th[data-key]")) {
    th.querySelector("button").addEventListener("click", () => {
      const key = th.dataset.key;
      if (sortKey === key) sortDir = -sortDir;
      else { sortKey = key; sortDir = th.dataset.numeric === "1" && key !== "rank" && key !== "id" ? -1 : 1; }
      for (const other of table.querySelectorAll("thead th[data-key]")) other.setAttribute("aria-sort", "none");
      th.setAttribute("aria-sort", sortDir === 1 ? "ascending" : "descending");
      page = 0; render();
    });
  }
  search.addEventListener("input", () => { page = 0; render(); });
  ablatedOnly.addEventListener("change", () => { page = 0; render(); });
  prev.addEventListener("click", () => { page -= 1; render(); });
  next.addEventListener("click", () => { page += 1; render(); });
  render();
})();
