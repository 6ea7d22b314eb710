/* qualflow review: spans in the unit's text, selection by mouse and keyboard, shortcuts,
   codebook search, the memo guard. No build step; every action is a plain form. */
(function () {
  "use strict";

  function typing(el) {
    return el && (el.tagName === "INPUT" || el.tagName === "TEXTAREA" || el.tagName === "SELECT" || el.isContentEditable);
  }
  function $(sel, root) { return (root || document).querySelector(sel); }
  function $$(sel, root) { return Array.prototype.slice.call((root || document).querySelectorAll(sel)); }
  function json(el, name) { try { return JSON.parse(el.getAttribute(name) || "[]"); } catch (e) { return []; } }

  var layout = $(".passage-layout");
  var unit = $("#unit");

  // ---------------------------------------------------------------- after a refused POST
  // The page answering a refused decision sits at the form's address: put the unit's own
  // address back, so a reload or a bookmark shows the unit instead of posting again.
  if (layout && /\/decide$/.test(location.pathname) && window.history.replaceState) {
    history.replaceState(null, "", layout.getAttribute("data-url"));
  }
  var banner = $("#conflict") || $("#error");
  if (banner) { banner.scrollIntoView({ block: "start" }); }

  // ---------------------------------------------------------------- the unit's text
  // Offsets are code points of the transcript text (what the server stores); the DOM
  // counts UTF-16 units, so every conversion goes through Array.from.
  var segs = unit ? $$(".seg", unit).map(function (el) {
    return { el: el, s: +el.getAttribute("data-s"), e: +el.getAttribute("data-e"), text: el.textContent };
  }) : [];
  var unitStart = unit ? +unit.getAttribute("data-start") : 0;
  var unitEnd = unit ? +unit.getAttribute("data-end") : 0;
  var sentences = unit ? json(unit, "data-sentences") : [];
  var ranges = unit ? json(unit, "data-ranges") : [];
  var chars = [];
  (function () {
    for (var p = unitStart; p < unitEnd; p++) { chars.push("\n"); }
    segs.forEach(function (g) {
      Array.from(g.text).forEach(function (c, i) { chars[g.s - unitStart + i] = c; });
    });
  })();
  function textOf(a, b) { return chars.slice(a - unitStart, b - unitStart).join(""); }
  function isSpace(p) { var c = chars[p - unitStart]; return c === undefined || /\s/.test(c); }

  function segOf(node) {
    var el = node && (node.nodeType === 3 ? node.parentNode : node);
    while (el && el !== unit) {
      if (el.classList && el.classList.contains("seg")) {
        for (var i = 0; i < segs.length; i++) { if (segs[i].el === el) { return segs[i]; } }
      }
      el = el.parentNode;
    }
    return null;
  }
  function pointOffset(node, offset) {
    var g = segOf(node);
    if (!g) { return null; }
    if (node.nodeType !== 3) { return offset > 0 ? g.e : g.s; }
    return g.s + Array.from(node.data.slice(0, offset)).length;
  }
  function domPoint(p, atEnd) {
    for (var i = 0; i < segs.length; i++) {
      var g = segs[i];
      if ((p >= g.s && p < g.e) || (atEnd && p === g.e)) {
        var node = g.el.firstChild;
        var units = Array.from(g.text).slice(0, p - g.s).join("").length;
        return { node: node, offset: units };
      }
    }
    return null;
  }
  /** The current text selection inside the unit as {start, end}, or null. */
  function selectionInUnit() {
    var sel = window.getSelection();
    if (!unit || !sel || sel.rangeCount === 0 || sel.isCollapsed) { return null; }
    var r = sel.getRangeAt(0);
    var touched = segs.filter(function (g) { return r.intersectsNode(g.el); });
    if (!touched.length) { return null; }
    var a = pointOffset(r.startContainer, r.startOffset);
    var b = pointOffset(r.endContainer, r.endOffset);
    if (a === null) { a = touched[0].s; }
    if (b === null) { b = touched[touched.length - 1].e; }
    if (b <= a) { return null; }
    return { start: a, end: b };
  }
  function showRange(a, b) {
    var from = domPoint(a, false), to = domPoint(b, true);
    if (!from || !to) { return; }
    window.getSelection().setBaseAndExtent(from.node, from.offset, to.node, to.offset);
    var focus = to.node.parentNode;
    if (focus && focus.scrollIntoView) { focus.scrollIntoView({ block: "nearest" }); }
  }

  // word and sentence moves (positions stay inside the unit)
  function nextWordEnd(p) {
    var q = p;
    while (q < unitEnd && isSpace(q)) { q++; }
    while (q < unitEnd && !isSpace(q)) { q++; }
    return q;
  }
  function prevWordEnd(p, floor) {
    var q = p;
    while (q > floor && !isSpace(q - 1)) { q--; }
    while (q > floor && isSpace(q - 1)) { q--; }
    return q;
  }
  function nextWordStart(p, ceiling) {
    var q = p;
    while (q < ceiling && !isSpace(q)) { q++; }
    while (q < ceiling && isSpace(q)) { q++; }
    return q;
  }
  function prevWordStart(p) {
    var q = p;
    while (q > unitStart && isSpace(q - 1)) { q--; }
    while (q > unitStart && !isSpace(q - 1)) { q--; }
    return q;
  }
  function move(range, key, shift) {
    var a = range.start, b = range.end;
    if (shift && key === "ArrowRight") { a = Math.min(nextWordStart(a, b), b - 1); }
    else if (shift && key === "ArrowLeft") { a = prevWordStart(a); }
    else if (key === "ArrowRight") { b = nextWordEnd(b); }
    else if (key === "ArrowLeft") { b = Math.max(prevWordEnd(b, a + 1), a + 1); }
    else if (key === "ArrowDown" || key === "ArrowUp") {
      var i = sentenceAt(range.start);
      var k = key === "ArrowDown" ? (i < 0 ? 0 : Math.min(i + 1, sentences.length - 1)) : Math.max(i - 1, 0);
      if (sentences[k]) { a = sentences[k][0]; b = sentences[k][1]; }
    }
    return { start: a, end: b };
  }
  function sentenceAt(p) {
    for (var i = 0; i < sentences.length; i++) { if (sentences[i][0] <= p && p < sentences[i][1]) { return i; } }
    return -1;
  }

  // ---------------------------------------------------------------- items (proposals, spans)
  function items() { return $$(".item").sort(function (x, y) { return x.getAttribute("data-number") - y.getAttribute("data-number"); }); }
  function selected() { return $(".item.selected"); }
  function numberOf(el) { return el ? el.getAttribute("data-number") : "0"; }
  function highlight(number, on) {
    $$(".seg").forEach(function (m) {
      var list = ((m.getAttribute("data-p") || "") + " " + (m.getAttribute("data-c") || "")).split(" ");
      if (list.indexOf(String(number)) >= 0) { m.classList.toggle("active", on); }
    });
  }
  function select(number) {
    items().forEach(function (it) {
      var on = numberOf(it) === String(number);
      it.classList.toggle("selected", on);
      highlight(numberOf(it), on);
      if (on) { it.scrollIntoView({ block: "nearest" }); }
    });
    $$(".sel-field").forEach(function (f) { f.value = String(number); });
  }
  function step(delta) {
    var all = items();
    if (!all.length) { return; }
    var i = all.indexOf(selected());
    var k = i < 0 ? 0 : Math.min(Math.max(i + delta, 0), all.length - 1);
    select(numberOf(all[k]));
  }
  if (layout) {
    var first = layout.getAttribute("data-selected");
    if (first && first !== "0") { select(first); }
    items().forEach(function (it) {
      var n = numberOf(it);
      it.addEventListener("mouseenter", function () { highlight(n, true); });
      it.addEventListener("mouseleave", function () { if (!it.classList.contains("selected")) { highlight(n, false); } });
      it.addEventListener("click", function (e) {
        if (e.target.closest("button, a, input, summary, details, form")) { return; }
        select(n);
      });
    });
    $$(".seg").forEach(function (m) {
      m.addEventListener("click", function () {
        if (!window.getSelection().isCollapsed) { return; }
        var list = ((m.getAttribute("data-c") || "") + " " + (m.getAttribute("data-p") || "")).trim().split(" ");
        if (list[0]) { select(list[0]); }
      });
    });
  }

  // ---------------------------------------------------------------- hints
  function hint(text) {
    var h = $("#hint");
    if (!h) { return; }
    h.textContent = text;
    h.hidden = !text;
    if (text) { h.scrollIntoView({ block: "nearest" }); }
  }

  // ---------------------------------------------------------------- adding and adjusting
  var selForm = $("#selection-form");
  var lastSelection = null;
  function offerSelection(range) {
    lastSelection = range;
    if (!selForm) { return; }
    selForm.querySelector("[name=start]").value = range.start;
    selForm.querySelector("[name=end]").value = range.end;
    var quote = textOf(range.start, range.end);
    $("#selection-quote").textContent = quote.length > 90 ? quote.slice(0, 87) + "…" : quote;
    selForm.hidden = false;
    var add = $("#add-form");
    if (add) {
      add.querySelector("[name=start]").value = range.start;
      add.querySelector("[name=end]").value = range.end;
    }
  }
  function dropSelection() {
    lastSelection = null;
    if (selForm) { selForm.hidden = true; }
    var add = $("#add-form");
    if (add) { add.querySelector("[name=start]").value = ""; add.querySelector("[name=end]").value = ""; }
  }
  function codeTheSelection(range) {
    offerSelection(range);
    var input = $("#selection-code");
    if (input) { input.focus(); }
  }
  function adjust(item, range) {
    var form = $("#adjust-form");
    if (!form || !item) { return; }
    form.querySelector("[name=new_start]").value = range.start;
    form.querySelector("[name=new_end]").value = range.end;
    var kind = item.getAttribute("data-kind");
    form.querySelector("[name=proposal_id]").value = kind === "proposal" ? item.getAttribute("data-id") : "";
    form.querySelector("[name=code]").value = kind === "span" ? item.getAttribute("data-code") : "";
    form.querySelector("[name=start]").value = kind === "span" ? item.getAttribute("data-s") : "";
    form.querySelector("[name=end]").value = kind === "span" ? item.getAttribute("data-e") : "";
    leaving.stay = true;
    form.submit();
  }
  if (unit) {
    unit.addEventListener("mouseup", function () {
      var range = selectionInUnit(); // final at mouseup: offer the code search at once
      if (range) { codeTheSelection(range); }
    });
  }
  var moveHere = $("#adjust-to-selection");
  if (moveHere) {
    moveHere.addEventListener("click", function () {
      var item = selected();
      if (item && lastSelection) { adjust(item, lastSelection); }
      else { hint("Select a proposal or a span first (its number, or click it)."); }
    });
  }
  $$("button.adjust").forEach(function (b) {
    b.addEventListener("click", function () {
      var item = b.closest(".item");
      select(numberOf(item));
      startAdjust(item);
    });
  });

  // ---------------------------------------------------------------- keyboard modes
  // "select": choose text to code (v); "adjust": move a span's boundaries (e).
  var mode = null;
  function startSelecting() {
    var range = selectionInUnit() || lastSelection;
    if (!range && sentences.length) { range = { start: sentences[0][0], end: sentences[0][1] }; }
    if (!range) { return; }
    mode = { kind: "select", range: range };
    showRange(range.start, range.end);
    hint("Selecting text: ↓ ↑ sentence, → ← end by a word, Shift+→ ← start by a word; Enter or / to code it, Esc to stop.");
  }
  function startAdjust(item) {
    if (!item) { return; }
    var live = selectionInUnit() || lastSelection;
    if (live) { adjust(item, live); return; }
    var a = item.getAttribute("data-s"), b = item.getAttribute("data-e");
    if (a === "" || b === "") { return; }
    mode = { kind: "adjust", item: item, range: { start: +a, end: +b } };
    showRange(mode.range.start, mode.range.end);
    hint("Adjusting " + item.getAttribute("data-code") + ": → ← move the end by a word, Shift+→ ← the start; Enter saves, Esc cancels.");
  }
  function endMode() {
    mode = null;
    hint("");
    window.getSelection().removeAllRanges();
  }
  function modeKey(e) {
    var k = e.key;
    if (k === "Escape") { endMode(); dropSelection(); return true; }
    if (/^Arrow(Left|Right|Up|Down)$/.test(k)) {
      if (mode.kind === "adjust" && (k === "ArrowUp" || k === "ArrowDown")) { return true; }
      mode.range = move(mode.range, k, e.shiftKey);
      showRange(mode.range.start, mode.range.end);
      return true;
    }
    if (k === "Enter" || (k === "/" && mode.kind === "select")) {
      var range = mode.range, current = mode;
      endMode();
      if (current.kind === "adjust") { adjust(current.item, range); }
      else { codeTheSelection(range); }
      return true;
    }
    return true; // other keys do nothing while a mode is on
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
    function options() { return $$("li[role=option]", list); }
    function mark(i) {
      var opts = options();
      active = Math.max(-1, Math.min(i, opts.length - 1));
      opts.forEach(function (o, k) { o.setAttribute("aria-selected", k === active ? "true" : "false"); });
      if (active >= 0) { opts[active].scrollIntoView({ block: "nearest" }); }
    }
    function choose(title) {
      input.value = title;
      list.hidden = true;
      if (form.id === "add-form" && lastSelection) { offerSelection(lastSelection); }
      leaving.stay = true;
      form.submit();
    }
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
            if (c.matched && c.matched.length && c.matched[0] !== "title") {
              var why = document.createElement("em"); why.className = "why";
              why.textContent = "matched in its " + c.matched.join(", ");
              li.appendChild(why);
            }
            li.addEventListener("mousedown", function (e) { e.preventDefault(); choose(c.title); });
            list.appendChild(li);
          });
          if (!codes.length) {
            var none = document.createElement("li");
            none.className = "no-match";
            none.textContent = q ? "No code matches “" + q + "” in titles, definitions or examples." : "The codebook is empty.";
            list.appendChild(none);
          }
          list.hidden = false;
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
        e.preventDefault();
        if (!list.hidden && active >= 0 && opts[active]) { choose(opts[active].querySelector("strong").textContent); }
        else if (input.value.trim()) { choose(input.value.trim()); }
      } else if (e.key === "Escape") { // leave the box; a second Escape drops a selection
        list.hidden = true;
        input.blur();
      }
    });
  }
  $$("input.code-search").forEach(attachSearch);

  // ---------------------------------------------------------------- the memo guard
  var memo = $("#memo");
  var leaving = { stay: false };
  var draftKey = layout ? "qualflow-memo:" + layout.getAttribute("data-passage") : "";
  function memoDirty() { return memo && memo.value !== (memo.getAttribute("data-saved") || ""); }
  function showDirty() {
    var flag = $("#memo-unsaved");
    if (flag) { flag.hidden = !memoDirty(); }
    try {
      if (memoDirty()) { sessionStorage.setItem(draftKey, memo.value); }
      else { sessionStorage.removeItem(draftKey); }
    } catch (e) { /* storage off: the warning still protects the draft */ }
  }
  if (memo) {
    try {
      var draft = sessionStorage.getItem(draftKey);
      if (draft !== null && draft !== memo.value) { memo.value = draft; }
    } catch (e) { /* no storage */ }
    showDirty();
    memo.addEventListener("input", showDirty);
    memo.addEventListener("keydown", function (e) {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); saveMemo(); }
      else if (e.key === "s" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); saveMemo(); }
      else if (e.key === "Escape") { e.preventDefault(); memo.blur(); }
    });
    var memoForm = $("#memo-form");
    memoForm.addEventListener("submit", function () { leaving.stay = true; clearDraft(); });
    var doneForm = $("#done-form");
    if (doneForm) {
      doneForm.addEventListener("submit", function () {
        if (memoDirty()) { // Done saves the memo as it stands
          var field = document.createElement("input");
          field.type = "hidden"; field.name = "memo"; field.value = memo.value;
          doneForm.appendChild(field);
        }
        leaving.stay = true;
      });
    }
  }
  function clearDraft() { try { sessionStorage.removeItem(draftKey); } catch (e) { /* none */ } }
  function saveMemo() {
    leaving.stay = true;
    clearDraft();
    $("#memo-form").submit();
  }
  // Actions on this unit come back to it, where the draft is restored; leaving it
  // (skip, previous, queue, a link) with an unsaved memo asks first.
  $$("form[method=post]").forEach(function (f) {
    if (f.id !== "done-form") { f.addEventListener("submit", function () { leaving.stay = true; }); }
  });
  window.addEventListener("beforeunload", function (e) {
    if (!leaving.stay && memoDirty()) {
      e.preventDefault();
      e.returnValue = "Your memo is not saved.";
      return e.returnValue;
    }
    return undefined;
  });

  // ---------------------------------------------------------------- shortcuts
  function click(sel, root) {
    var el = (root || document).querySelector(sel);
    if (el && !el.disabled) { leaving.stay = el.id !== "next-link" && el.id !== "prev-link"; el.click(); return true; }
    return false;
  }
  document.addEventListener("keydown", function (e) {
    if (!layout) { return; }
    if (mode && !typing(document.activeElement)) {
      if (modeKey(e)) { e.preventDefault(); }
      return;
    }
    if (e.ctrlKey || e.metaKey || e.altKey || typing(document.activeElement)) { return; }
    var it = selected();
    var kind = it ? it.getAttribute("data-kind") : "";
    var k = e.key;
    var handled = true;
    if (/^[1-9]$/.test(k)) { select(k); }
    else if (k === "]") { step(1); }
    else if (k === "[") { step(-1); }
    else if (k === "a" && kind === "proposal") { click("[data-shortcut=accept]", it); }
    else if (k === "r" && kind === "proposal") { click("[data-shortcut=reject]", it); }
    else if (k === "r" && kind === "span") { click("[data-shortcut=remove]", it); }
    else if (k === "e" && it) { startAdjust(it); }
    else if (k === "c" && kind === "proposal") {
      var d = it.querySelector("details.replace");
      if (d) { d.open = true; d.querySelector("input.code-search").focus(); }
    }
    else if (k === "v") { startSelecting(); }
    else if (k === "/") {
      var range = selectionInUnit() || lastSelection;
      if (range) { codeTheSelection(range); } else { $("#add-code").focus(); }
    }
    else if (k === "x") { click("#no-code"); }
    else if (k === "f") { click("#flag"); }
    else if (k === "m") { memo.focus(); }
    else if (k === "u") { click("#undo"); }
    else if (k === "n") {
      var done = $("#done-next");
      if (done && done.disabled) {
        var why = $("#done-blocked");
        hint(why ? why.textContent : "Not done yet.");
      } else { click("#done-next"); }
    }
    else if (k === "j") { click("#next-link"); }
    else if (k === "k") { click("#prev-link"); }
    else if (k === "Escape") { dropSelection(); hint(""); }
    else { handled = false; }
    if (handled) { e.preventDefault(); }
  });
})();
