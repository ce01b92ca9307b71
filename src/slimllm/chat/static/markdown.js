// A small markdown renderer for model output that cannot produce markup: it builds DOM nodes
// and sets only textContent, never innerHTML, so "<script>" or "<img onerror=...>" in a reply
// stays text. Supported: fenced code blocks, headings, lists, block quotes, paragraphs, inline
// code, bold, italic, and links whose target is http(s) (anything else stays text).
"use strict";

(function () {
  const FENCE = /^\s*```/;
  const HEADING = /^(#{1,6})\s+(.*)$/;
  const BULLET = /^\s*[-*+]\s+(.*)$/;
  const NUMBERED = /^\s*\d{1,9}[.)]\s+(.*)$/;
  const QUOTE = /^\s*>\s?(.*)$/;
  const INLINE = /`([^`\n]+)`|\[([^\]\n]+)\]\(([^()\s]+)\)|\*\*([^*\n]+)\*\*|\*([^*\n]+)\*/;

  function element(tag, children) {
    const node = document.createElement(tag);
    for (const child of children) node.append(child);
    return node;
  }

  function safeUrl(href) {
    try {
      const url = new URL(href);
      return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
    } catch (e) {
      return null;
    }
  }

  function inline(text) {
    const out = [];
    let at = 0;
    // A regex of its own per call: the recursion for bold, italic and link text would reset a
    // shared one's lastIndex.
    const pattern = new RegExp(INLINE.source, "g");
    for (let m = pattern.exec(text); m !== null; m = pattern.exec(text)) {
      if (m.index > at) out.push(document.createTextNode(text.slice(at, m.index)));
      at = pattern.lastIndex;
      if (m[1] !== undefined) {
        const code = document.createElement("code");
        code.textContent = m[1];
        out.push(code);
      } else if (m[2] !== undefined) {
        const href = safeUrl(m[3]);
        if (href === null) {
          out.push(document.createTextNode(m[0]));
        } else {
          const link = element("a", inline(m[2]));
          link.href = href;
          link.rel = "noopener noreferrer nofollow";
          link.target = "_blank";
          out.push(link);
        }
      } else if (m[4] !== undefined) {
        out.push(element("strong", inline(m[4])));
      } else {
        out.push(element("em", inline(m[5])));
      }
    }
    if (at < text.length) out.push(document.createTextNode(text.slice(at)));
    return out;
  }

  function render(text) {
    const root = document.createDocumentFragment();
    const lines = text.split("\n");
    let paragraph = [];
    let list = null;

    function flush() {
      if (paragraph.length) root.append(element("p", inline(paragraph.join("\n"))));
      paragraph = [];
      list = null;
    }

    for (let i = 0; i < lines.length; i++) {
      const line = lines[i];
      let m;
      if (FENCE.test(line)) {
        flush();
        const body = [];
        // An unclosed fence (a reply still streaming) runs to the end.
        for (i++; i < lines.length && !FENCE.test(lines[i]); i++) body.push(lines[i]);
        const code = document.createElement("code");
        code.textContent = body.join("\n");
        root.append(element("pre", [code]));
      } else if ((m = HEADING.exec(line))) {
        flush();
        root.append(element(`h${Math.min(m[1].length + 2, 6)}`, inline(m[2])));
      } else if ((m = BULLET.exec(line)) || (m = NUMBERED.exec(line))) {
        const tag = BULLET.test(line) ? "ul" : "ol";
        if (paragraph.length) flush();
        if (list === null || list.tagName.toLowerCase() !== tag) {
          list = document.createElement(tag);
          root.append(list);
        }
        list.append(element("li", inline(m[1])));
      } else if ((m = QUOTE.exec(line))) {
        flush();
        root.append(element("blockquote", inline(m[1])));
      } else if (line.trim() === "") {
        flush();
      } else {
        list = null;
        paragraph.push(line);
      }
    }
    flush();
    return root;
  }

  window.renderMarkdown = render;
})();
