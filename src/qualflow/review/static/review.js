/* qualflow review: keyboard shortcuts, proposal selection, codebook search. No build step. */
(function () {
  "use strict";

  function typing(el) {
    return el && (el.tagName === "INPUT" || el.tagName === "TEXTAREA" || el.tagName === "SELECT" || el.isContentEditable);
  }

  // ---------------------------------------------------------------- proposal selection
  var layout = document.querySelector(".passage-layout");
  function proposals() { return Array.prototype.slice.call(document.querySelectorAll(".proposal")); }
  function selected() { return document.querySelector(".proposal.selected"); }
  function highlight(number, on) {
    document.querySelectorAll("mark.ev").forEach(function (m) {
      var ps = (m.getAttribute("data-p") || "").split(" ");
      if (ps.indexOf(String(number)) >= 0) { m.classList.toggle("active", on); }
    });
  }
  function select(number) {
    proposals().forEach(function (p) {
      var on = p.getAttribute("data-number") === String(number);
      p.classList.toggle("selected", on);
      highlight(p.getAttribute("data-number"), on);
      if (on) { p.scrollIntoView({ block: "nearest" }); }
    });
  }
  if (layout) {
    var first = layout.getAttribute("data-selected");
    if (first && first !== "0") { select(first); }
    proposals().forEach(function (p) {
      var n = p.getAttribute("data-number");
      p.addEventListener("mouseenter", function () { highlight(n, true); });
      p.addEventListener("mouseleave", function () { if (!p.classList.contains("selected")) { highlight(n, false); } });
      p.addEventListener("click", function (e) {
        if (e.target.closest("button, a, input, summary, details")) { return; }
        select(n);
      });
    });
  }

  // ---------------------------------------------------------------- codebook search
  function debounce(fn, ms) {
    var t = null;
    return function () { var args = arguments; clearTimeout(t); t = setTimeout(function () { fn.apply(null, args); }, ms); };
  }
  function attachSearch(input) {
    var form = input.closest("form");
    var list = form.querySelector(".results");
    var passage = layout ? layout.getAttribute("data-passage") : "";
    var active = -1;
    input.removeAttribute("list"); // the live search replaces the datalist fallback
    function options() { return Array.prototype.slice.call(list.querySelectorAll("li")); }
    function mark(i) {
      var opts = options();
      active = Math.max(-1, Math.min(i, opts.length - 1));
      opts.forEach(function (o, k) { o.setAttribute("aria-selected", k === active ? "true" : "false"); });
      if (active >= 0) { opts[active].scrollIntoView({ block: "nearest" }); }
    }
    function choose(title) { input.value = title; list.hidden = true; form.submit(); }
    var run = debounce(function () {
      var q = input.value.trim();
      fetch("/codes?q=" + encodeURIComponent(q) + "&passage=" + encodeURIComponent(passage), { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) { return r.ok ? r.json() : []; })
        .then(function (codes) {
          list.innerHTML = "";
          codes.forEach(function (c) {
            var li = document.createElement("li");
            li.setAttribute("role", "option");
            var strong = document.createElement("strong"); strong.textContent = c.title;
            var span = document.createElement("span"); span.textContent = c.description || "";
            li.appendChild(strong); li.appendChild(span);
            li.addEventListener("mousedown", function (e) { e.preventDefault(); choose(c.title); });
            list.appendChild(li);
          });
          list.hidden = codes.length === 0;
          mark(codes.length ? 0 : -1);
        });
    }, 120);
    input.addEventListener("input", run);
    input.addEventListener("focus", run);
    input.addEventListener("blur", function () { setTimeout(function () { list.hidden = true; }, 150); });
    input.addEventListener("keydown", function (e) {
      if (e.key === "ArrowDown") { e.preventDefault(); mark(active + 1); }
      else if (e.key === "ArrowUp") { e.preventDefault(); mark(active - 1); }
      else if (e.key === "Enter") {
        var opts = options();
        if (!list.hidden && active >= 0 && opts[active]) {
          e.preventDefault();
          choose(opts[active].querySelector("strong").textContent);
        }
      } else if (e.key === "Escape") { list.hidden = true; input.blur(); }
    });
  }
  document.querySelectorAll("input.code-search").forEach(attachSearch);

  // ---------------------------------------------------------------- shortcuts
  function click(sel, root) {
    var el = (root || document).querySelector(sel);
    if (el && !el.disabled) { el.click(); return true; }
    return false;
  }
  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey || typing(document.activeElement)) { return; }
    if (!layout) { return; }
    var p = selected();
    var k = e.key;
    var handled = true;
    if (/^[1-9]$/.test(k)) { select(k); }
    else if (k === "a" && p) { click("[data-shortcut=accept]", p); }
    else if (k === "r" && p) { click("[data-shortcut=reject]", p); }
    else if (k === "c" && p) {
      var d = p.querySelector("details.replace");
      if (d) { d.open = true; d.querySelector("input.code-search").focus(); }
    }
    else if (k === "/") { document.getElementById("add-code").focus(); }
    else if (k === "x") { click("#no-code"); }
    else if (k === "f") { click("#flag"); }
    else if (k === "m") { document.getElementById("memo").focus(); }
    else if (k === "u") { click("#undo"); }
    else if (k === "n") { click("#done-next"); }
    else if (k === "j") { click("#next-link"); }
    else if (k === "k") { click("#prev-link"); }
    else { handled = false; }
    if (handled) { e.preventDefault(); }
  });
})();
