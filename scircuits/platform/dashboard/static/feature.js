(function () {
  const f = window.SC_FEATURE, meta = window.SC_META;
  const main = document.getElementById("feature");
  const el = SC.el;
  if (!f) { main.replaceChildren(el("p", {class: "error", text: "This feature's data file did not load."})); return; }
  window.SC_EXAMPLES = window.SC_EXAMPLES || {};

  function section(id, title, children) {
    return el("section", {"aria-labelledby": id}, [el("h2", {id: id, text: title}), ...children]);
  }
  function facts(pairs) {
    const dl = el("dl", {class: "facts"});
    for (const [k, v] of pairs) dl.append(el("dt", {text: k}), el("dd", {text: v}));
    return dl;
  }
  function histogram() {
    const h = f.histogram, W = 640, H = 220, L = 56, B = 40, T = 10, R = 10;
    const svgNS = "http://www.w3.org/2000/svg";
    const mk = (tag, attrs, text) => {
      const n = document.createElementNS(svgNS, tag);
      for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
      if (text !== undefined) n.textContent = text;
      return n;
    };
    const total = h.counts.reduce((a, b) => a + b, 0);
    const label = "Histogram of the " + total + " nonzero activations of feature " + f.id +
      " on a logarithmic activation axis from " + SC.fmt(h.edges[0]) + " to " + SC.fmt(h.edges[h.edges.length - 1]) +
      "; the tallest bar holds " + Math.max(...h.counts) + " tokens.";
    const svg = mk("svg", {class: "hist", role: "img", viewBox: `0 0 ${W} ${H}`, width: "100%",
                           "aria-labelledby": "hist-title hist-desc", id: "histogram"});
    svg.append(mk("title", {id: "hist-title"}, "Activation histogram of feature " + f.id), mk("desc", {id: "hist-desc"}, label));
    const lx = h.edges.map(Math.log10), x0 = lx[0], x1 = lx[lx.length - 1], peak = Math.max(...h.counts, 1);
    const X = v => L + (W - L - R) * (v - x0) / Math.max(x1 - x0, 1e-9), Y = c => H - B - (H - B - T) * c / peak;
    h.counts.forEach((c, i) => {
      if (!c) return;
      const bar = mk("rect", {class: "bar", x: X(lx[i]) + 0.5, y: Y(c), width: Math.max(X(lx[i + 1]) - X(lx[i]) - 1, 1), height: H - B - Y(c)});
      bar.append(mk("title", {}, c + " activations in [" + SC.fmt(h.edges[i]) + ", " + SC.fmt(h.edges[i + 1]) + ")"));
      svg.append(bar);
    });
    svg.append(mk("line", {x1: L, x2: W - R, y1: H - B, y2: H - B}), mk("line", {x1: L, x2: L, y1: T, y2: H - B}));
    let ticks = [];
    for (const steps of [[1], [1, 2, 5], [1, 1.5, 2, 3, 5, 7]]) {
      ticks = [];
      for (let d = Math.floor(x0); d <= Math.ceil(x1); d++) {
        for (const m of steps) { const t = Math.log10(m) + d; if (t >= x0 && t <= x1) ticks.push(t); }
      }
      if (ticks.length >= 3) break;
    }
    for (const t of ticks) {
      svg.append(mk("line", {x1: X(t), x2: X(t), y1: H - B, y2: H - B + 4}),
                 mk("text", {x: X(t), y: H - B + 16, "text-anchor": "middle"}, SC.fmt(10 ** t, 2)));
    }
    svg.append(mk("text", {x: (L + W) / 2, y: H - 6, "text-anchor": "middle"}, "activation (log scale)"));
    svg.append(mk("text", {x: L - 6, y: T + 8, "text-anchor": "end"}, String(peak)), mk("text", {x: L - 6, y: H - B, "text-anchor": "end"}, "0"));
    svg.append(mk("text", {x: 12, y: (H - B) / 2, transform: `rotate(-90 12 ${(H - B) / 2})`, "text-anchor": "middle"}, "tokens"));
    return el("figure", {}, [svg, el("figcaption", {text: label})]);
  }
  function tokens(ctx) {
    const toks = window.SC_EXAMPLES[ctx.run];
    const line = el("div", {class: "ctx"});
    if (!toks) { line.textContent = "(example tokens missing)"; return line; }
    const peak = Math.max(f.max_activation, 1e-9);
    ctx.values.forEach((v, i) => {
      const t = toks[ctx.start + i];
      const span = el("span", {class: "tok" + (v > 0 ? " on" : "") + (i === ctx.focus ? " focus" : ""), text: t});
      if (v > 0) {
        const text = "activation " + SC.fmt(v);
        span.style.backgroundColor = `rgba(var(--shade), ${Math.min(1, 0.15 + 0.85 * v / peak).toFixed(3)})`;
        span.setAttribute("tabindex", "0");
        span.setAttribute("title", text);
        span.setAttribute("data-act", SC.fmt(v));
        span.setAttribute("aria-label", JSON.stringify(t) + ", " + text);
      }
      line.append(span);
    });
    return line;
  }
  function whole(ctx) {
    const toks = window.SC_EXAMPLES[ctx.run] || [];
    const at = ctx.start + ctx.focus;
    const pre = el("pre", {}, [toks.slice(0, at).join(""), el("mark", {class: "focus", text: toks[at] || ""}), toks.slice(at + 1).join("")]);
    return el("details", {}, [el("summary", {text: "Whole sequence (example " + ctx.example + ")"}), pre]);
  }
  function contextList(list) {
    return el("ol", {class: "contexts"}, list.map(ctx => el("li", {}, [
      el("div", {class: "meta", text: "activation " + SC.fmt(ctx.activation) + " on " +
         JSON.stringify(window.SC_EXAMPLES[ctx.run] ? window.SC_EXAMPLES[ctx.run][ctx.start + ctx.focus] : "?") +
         " · example " + ctx.example + ", token " + (ctx.start + ctx.focus)}),
      tokens(ctx), whole(ctx)])));
  }
  function effects() {
    const a = f.ablation;
    if (!a) {
      return [el("p", {class: "note", text: "results.json describes only the " + meta.n_described +
        " top-ranked features (ranking: " + meta.rank_order + "); this feature is not among them, so no attribution " +
        "or ablation effect was recorded for it."})];
    }
    const ci = v => v ? "[" + SC.fmt(v[0]) + ", " + SC.fmt(v[1]) + "]" : "–";
    const rows = [
      ["Rank", a.rank === null ? "–" : String(a.rank), ""],
      ["Attribution (estimated Δ log-prob)", SC.fmt(a.attribution), "gradient × ablation estimate"],
      ["Exact ablation: Δ log-prob", SC.fmt(a.exact_logprob_delta), ci(a.exact_logprob_ci)],
      ["Exact ablation: Δ accuracy", SC.fmt(a.exact_accuracy_delta), ci(a.exact_accuracy_ci)],
      ["Firing frequency on the evaluation tokens", SC.pct(a.frequency), ""],
    ];
    const table = el("table", {}, [
      el("caption", {text: "Effect of ablating feature " + f.id + " (" + meta.ablation + ") on " + meta.benchmark +
        ", versus the unablated splice; " + meta.interval}),
      el("thead", {}, [el("tr", {}, [el("th", {scope: "col", text: "Quantity"}), el("th", {scope: "col", class: "num", text: "Value"}), el("th", {scope: "col", text: "95% interval / note"})])]),
      el("tbody", {}, rows.map(r => el("tr", {}, [el("th", {scope: "row", text: r[0]}), el("td", {class: "num", text: r[1]}), el("td", {text: r[2]})]))),
    ]);
    const out = [table];
    if (a.exact_logprob_delta === null) out.push(el("p", {class: "muted", text: "Only the top " + meta.exact_top + " features were ablated one at a time; this one has its attribution only."}));
    return out;
  }
  function logitTable(title, list) {
    return el("table", {}, [el("caption", {text: title}),
      el("thead", {}, [el("tr", {}, [el("th", {scope: "col", text: "Token"}), el("th", {scope: "col", class: "num", text: "Logit effect"})])]),
      el("tbody", {}, list.map(e => el("tr", {}, [el("th", {scope: "row", text: SC.visible(e.token)}), el("td", {class: "num", text: SC.fmt(e.logit)})])))]);
  }
  function spread(s) {
    return s ? SC.fmt(s.median) + " (" + SC.fmt(s.q10) + " to " + SC.fmt(s.q90) + ")" : "–";
  }
  function figures(c) {
    return el("table", {class: "figures"}, [
      el("caption", {text: "Matched correlations over the " + c.n_tokens + " compared tokens (" + c.alignment +
        "-aligned): median (10th to 90th percentile) over matched live latents, so a feature's correlation reads " +
        "against this pair, the ceiling and the floors"}),
      el("thead", {}, [el("tr", {}, [el("th", {scope: "col", text: "Comparison"}),
        el("th", {scope: "col", class: "num", text: "One-to-one"}), el("th", {scope: "col", class: "num", text: "Max-correlation"})])]),
      el("tbody", {}, c.rows.map(r => el("tr", {}, [el("th", {scope: "row", text: r.what}),
        el("td", {class: "num", text: spread(r.one_to_one)}), el("td", {class: "num", text: spread(r.max)})])))]);
  }
  function matches() {
    const comparisons = window.SC_COMPARISONS || [];
    if (!comparisons.length) return [el("p", {class: "note", text: "No compared runs for this run yet. Run `scircuits compare` " +
      "on this run and another, then `scircuits dashboard RUN_DIR --compare COMPARE_DIR` (compare also refreshes existing " +
      "dashboards): the matched features are listed here with links."})];
    const mine = window.SC_MATCHES || [];
    return comparisons.map((c, i) => {
      const found = mine.filter(m => m.comparison === i);
      const list = found.length ? el("table", {class: "matched"}, [
        el("caption", {text: "Features of " + c.other + " matched to feature " + f.id}),
        el("thead", {}, [el("tr", {}, [el("th", {scope: "col", text: "Matched feature"}),
          el("th", {scope: "col", class: "num", text: "Correlation"}), el("th", {scope: "col", text: "Match kind"})])]),
        el("tbody", {}, found.map(m => el("tr", {}, [
          el("th", {scope: "row"}, [m.href ? el("a", {href: m.href, text: "Feature " + m.feature}) :
            "Feature " + m.feature + " (no dashboard page)"]),
          el("td", {class: "num", text: SC.fmt(m.similarity)}), el("td", {text: m.kinds.join(", ")})])))])
        : el("p", {class: "muted", text: "No match: this feature was not live on the compared tokens, or had no positively " +
          "correlated partner."});
      return el("section", {"aria-label": "comparison with " + c.other}, [
        el("h3", {text: "Versus " + c.other}),
        list, figures(c),
        c.note ? el("p", {class: "muted", text: c.note}) : "",
        el("p", {class: "meta", text: "From " + c.compare_dir}),
      ]);
    });
  }
  function render() {
    const bands = f.quantiles.map(q => el("section", {"aria-label": "quantile band " + q.quantile}, [
      el("h3", {text: "Band " + q.quantile + " of " + q.of + ": activations " + SC.fmt(q.bin_min) + " to " + SC.fmt(q.bin_max) +
        " (" + SC.pct(q.fraction) + " of the sampled nonzero activations)"}),
      q.contexts.length ? contextList(q.contexts) : el("p", {class: "muted", text: "Its samples are already among the top contexts."})]));
    main.replaceChildren(
      section("facts", "Summary", [facts([
        ["Firing frequency", SC.pct(f.frequency) + " (" + f.n_fired + " of " + f.n_tokens + " tokens)"],
        ["Mean activation (all tokens)", SC.fmt(f.mean_activation)],
        ["Largest activation", SC.fmt(f.max_activation)],
        ["Tokens scanned", meta.tokens_note]])]),
      section("hist", "Activation histogram", [histogram()]),
      section("effects", "Ablation effects and attribution", effects()),
      section("logits", "Logit effects (direct path)", [
        el("p", {class: "muted", text: "The decoder direction through the final norm's weight and the unembedding only: " +
          "the blocks after layer " + meta.layer + " are left out."}),
        el("div", {class: "logits"}, [logitTable("Promoted tokens", f.promoted), logitTable("Suppressed tokens", f.suppressed)])]),
      section("top", "Top contexts", [el("p", {class: "muted", text: "Shading grows with the activation; hover or focus a shaded token to read its value."}),
        contextList(f.top)]),
      section("quantiles", "Contexts sampled by activation quantile", [
        el("p", {class: "muted", text: "A uniform sample of " + meta.reservoir + " of the feature's nonzero activations, cut into " +
          meta.n_quantiles + " bands of equal count; a few contexts from each band."}), ...bands]),
      section("matches", "Matched features in compared runs", matches()));
  }
  const shards = [...new Set([...f.top, ...f.quantiles.flatMap(q => q.contexts)].map(c => Math.floor(c.run / meta.shard_size)))];
  const sources = shards.map(s => "../data/examples/" + s + ".js");
  if ((window.SC_COMPARISONS || []).length) sources.push("../data/matches/" + f.id + ".js");
  let pending = sources.length;
  if (!pending) render();
  for (const src of sources) {
    const tag = document.createElement("script");
    tag.src = src;
    tag.onload = () => { if (--pending === 0) render(); };
    tag.onerror = () => main.replaceChildren(el("p", {class: "error", text: "Could not load " + tag.src}));
    document.body.append(tag);
  }
})();
