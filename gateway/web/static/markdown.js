// A small, safe markdown renderer for model answers: it builds DOM nodes with textContent and
// never parses HTML, so whatever the model writes (<script>, <img onerror>, ...) stays text.
// Covers what chat answers use: headings, paragraphs, fenced code, inline code, bold, italic,
// links (http, https and mailto only), ordered and unordered lists, tables, quotes and rules.
"use strict";

const Markdown = (() => {
  const el = (tag, cls) => {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    return node;
  };

  const SAFE_LINK = /^(https?:|mailto:)/i;
  // Inline spans, first match wins: code, bold, italic, links.
  // Underscores inside a word (snake_case, __dunder__ in code) are not emphasis.
  const INLINE = /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)|\*\*([^*]+)\*\*|(?<!\w)__([^_]+)__(?!\w)|\*([^*\s][^*]*)\*|(?<!\w)_([^_\s][^_]*)_(?!\w)|\[([^\]]+)\]\(([^)\s]+)\)/;

  function inline(text, parent) {
    while (text) {
      const match = INLINE.exec(text);
      if (!match) { parent.append(text); return; }
      if (match.index) parent.append(text.slice(0, match.index));
      if (match[1]) {
        const code = el("code");
        code.textContent = match[2];
        parent.append(code);
      } else if (match[3] || match[4]) {
        const strong = el("strong");
        inline(match[3] || match[4], strong);
        parent.append(strong);
      } else if (match[5] || match[6]) {
        const em = el("em");
        inline(match[5] || match[6], em);
        parent.append(em);
      } else if (SAFE_LINK.test(match[8])) {
        const a = el("a");
        a.href = match[8];
        a.rel = "noopener noreferrer";
        a.target = "_blank";
        inline(match[7], a);
        parent.append(a);
      } else {
        parent.append(match[0]);  // a javascript: or other link stays text
      }
      text = text.slice(match.index + match[0].length);
    }
  }

  function codeBlock(lines, lang, copyButton) {
    const wrap = el("div", "code-block");
    const pre = el("pre");
    const code = el("code");
    if (lang) { code.dataset.lang = lang; wrap.dataset.lang = lang; }
    code.textContent = lines.join("\n");
    pre.append(code);
    if (copyButton) wrap.append(copyButton(() => code.textContent));
    wrap.append(pre);
    return wrap;
  }

  const cells = (line) => line.trim().replace(/^\||\|$/g, "").split("|").map((c) => c.trim());
  const isTableRule = (line) => /^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$/.test(line);
  const LIST_ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;

  function table(rows) {
    const node = el("table");
    const head = el("thead");
    const tr = el("tr");
    for (const cell of cells(rows[0])) { const th = el("th"); inline(cell, th); tr.append(th); }
    head.append(tr);
    node.append(head);
    const body = el("tbody");
    for (const row of rows.slice(2)) {
      const line = el("tr");
      for (const cell of cells(row)) { const td = el("td"); inline(cell, td); line.append(td); }
      body.append(line);
    }
    node.append(body);
    return node;
  }

  function list(items) {
    const ordered = /\d/.test(items[0].marker);
    const node = el(ordered ? "ol" : "ul");
    if (ordered && parseInt(items[0].marker, 10) !== 1) node.start = parseInt(items[0].marker, 10);
    for (const item of items) {
      const li = el("li");
      inline(item.text, li);
      node.append(li);
    }
    return node;
  }

  // Render markdown into a fresh fragment. copyButton(getText) makes a code block's copy button.
  function render(source, copyButton) {
    const out = document.createDocumentFragment();
    const lines = source.replace(/\r\n?/g, "\n").split("\n");
    let paragraph = [];
    const flush = () => {
      if (!paragraph.length) return;
      const p = el("p");
      paragraph.forEach((line, i) => {
        if (i) p.append(el("br"));
        inline(line, p);
      });
      out.append(p);
      paragraph = [];
    };
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i];
      const fence = /^\s*(```|~~~)\s*([\w+-]*)\s*$/.exec(line);
      if (fence) {
        flush();
        const body = [];
        for (i++; i < lines.length && !lines[i].trim().startsWith(fence[1]); i++) body.push(lines[i]);
        out.append(codeBlock(body, fence[2], copyButton));  // an unclosed fence: still streaming
        continue;
      }
      const heading = /^(#{1,6})\s+(.*?)\s*#*\s*$/.exec(line);
      if (heading) {
        flush();
        const h = el(`h${heading[1].length}`);
        inline(heading[2], h);
        out.append(h);
        continue;
      }
      if (/^\s*([-*_])(\s*\1){2,}\s*$/.test(line)) { flush(); out.append(el("hr")); continue; }
      if (line.includes("|") && i + 1 < lines.length && isTableRule(lines[i + 1])) {
        flush();
        const rows = [line, lines[i + 1]];
        for (i += 2; i < lines.length && lines[i].includes("|") && lines[i].trim(); i++) rows.push(lines[i]);
        i--;
        out.append(table(rows));
        continue;
      }
      if (LIST_ITEM.test(line)) {
        flush();
        const items = [];
        for (; i < lines.length && LIST_ITEM.test(lines[i]); i++) {
          const [, , marker, text] = LIST_ITEM.exec(lines[i]);
          items.push({ marker, text });
        }
        i--;
        out.append(list(items));
        continue;
      }
      if (/^\s*>/.test(line)) {
        flush();
        const quoted = [];
        for (; i < lines.length && /^\s*>/.test(lines[i]); i++) quoted.push(lines[i].replace(/^\s*>\s?/, ""));
        i--;
        const block = el("blockquote");
        block.append(render(quoted.join("\n"), copyButton));
        out.append(block);
        continue;
      }
      if (!line.trim()) { flush(); continue; }
      paragraph.push(line);
    }
    flush();
    return out;
  }

  return { render };
})();
