// Model output to DOM nodes, unable to produce markup: markdown-it (vendor.js) parses the text
// into a token tree with raw HTML off, and this file builds the nodes itself with createElement,
// a fixed list of tags and textContent -- never innerHTML. Code is highlighted by highlight.js,
// whose token tree (not its HTML string) becomes <span class="hljs-..."> nodes. Links keep only
// http(s) and mailto targets and open with rel="noopener noreferrer nofollow"; an image becomes a
// link to it (the page loads nothing from elsewhere). GitHub-flavoured: tables, strikethrough,
// task lists ("- [x] done"), autolinks.
"use strict";

(function () {
  const { MarkdownIt, hljs } = window.slimllmVendor;
  const md = new MarkdownIt({ html: false, linkify: true, typographer: false, breaks: true });

  // Tags a token may open; any other token type is rendered as its text.
  const TAGS = new Set([
    "p", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "li", "blockquote", "table", "thead",
    "tbody", "tr", "th", "td", "strong", "em", "s", "a", "hr", "br",
  ]);
  const SCHEMES = new Set(["http:", "https:", "mailto:"]);

  function safeUrl(href) {
    try {
      const url = new URL(href);
      return SCHEMES.has(url.protocol) ? url.href : null;
    } catch (e) {
      return null;
    }
  }

  // highlight.js's token tree: strings and {scope, children}. Scopes become class names from a
  // fixed alphabet, so nothing of the code can reach an attribute.
  function highlighted(code, language) {
    if (!language || !hljs.getLanguage(language)) return document.createTextNode(code);
    let root;
    try {
      root = hljs.highlight(code, { language, ignoreIllegals: true })._emitter.rootNode;
    } catch (e) {
      return document.createTextNode(code);
    }
    const fragment = document.createDocumentFragment();
    (function walk(node, parent) {
      for (const child of node.children || []) {
        if (typeof child === "string") {
          parent.append(document.createTextNode(child));
        } else {
          const span = document.createElement("span");
          const scope = String(child.scope || child.language || "").split(".")[0];
          if (/^[a-z][a-z_-]{0,30}$/.test(scope)) span.className = `hljs-${scope}`;
          walk(child, span);
          parent.append(span);
        }
      }
    })(root, fragment);
    return fragment;
  }

  async function copy(text, button) {
    try {
      await navigator.clipboard.writeText(text);
      button.textContent = "Copied";
    } catch (e) {
      button.textContent = "Copy failed";
    }
    setTimeout(() => (button.textContent = "Copy"), 1500);
  }

  function codeBlock(token) {
    const language = (token.info || "").trim().split(/\s+/)[0].toLowerCase();
    const figure = document.createElement("div");
    figure.className = "code-block";
    const bar = document.createElement("div");
    bar.className = "code-bar";
    const label = document.createElement("span");
    label.textContent = language || "text";
    const button = document.createElement("button");
    button.type = "button";
    button.className = "copy";
    button.textContent = "Copy";
    const text = token.content.replace(/\n$/, "");
    button.addEventListener("click", () => copy(text, button));
    bar.append(label, button);
    const pre = document.createElement("pre");
    const code = document.createElement("code");
    if (language && hljs.getLanguage(language)) code.className = "hljs";
    code.append(highlighted(text, language));
    pre.append(code);
    figure.append(bar, pre);
    return figure;
  }

  function open(token) {
    const tag = token.tag;
    if (!TAGS.has(tag)) return document.createElement("span");
    const node = document.createElement(tag);
    if (tag === "a") {
      const href = safeUrl(token.attrGet("href") || "");
      if (href === null) return document.createElement("span");
      node.href = href;
      node.rel = "noopener noreferrer nofollow";
      node.target = "_blank";
    } else if (tag === "ol") {
      const start = parseInt(token.attrGet("start") || "1", 10);
      if (Number.isFinite(start) && start !== 1) node.start = start;
    } else if (tag === "th" || tag === "td") {
      const style = token.attrGet("style") || "";
      const align = /text-align:(left|right|center)/.exec(style);
      if (align) node.className = `align-${align[1]}`;
    }
    return node;
  }

  // "- [ ] todo" / "- [x] done": the list item gets a disabled check box.
  function taskBox(li, inlineToken) {
    const first = inlineToken.children && inlineToken.children[0];
    if (!first || first.type !== "text") return;
    const m = /^\[([ xX])\]\s+/.exec(first.content);
    if (!m) return;
    first.content = first.content.slice(m[0].length);
    const box = document.createElement("input");
    box.type = "checkbox";
    box.disabled = true;
    box.checked = m[1] !== " ";
    box.setAttribute("aria-label", box.checked ? "done" : "to do");
    li.classList.add("task");
    li.prepend(box);
  }

  function inline(children, parent) {
    const stack = [parent];
    for (const token of children) {
      const top = stack[stack.length - 1];
      if (token.nesting === 1) {
        const node = open(token);
        top.append(node);
        stack.push(node);
      } else if (token.nesting === -1) {
        if (stack.length > 1) stack.pop();
      } else if (token.type === "text") {
        top.append(document.createTextNode(token.content));
      } else if (token.type === "code_inline") {
        const code = document.createElement("code");
        code.textContent = token.content;
        top.append(code);
      } else if (token.type === "softbreak" || token.type === "hardbreak") {
        top.append(document.createElement("br"));
      } else if (token.type === "image") {
        const href = safeUrl(token.attrGet("src") || "");
        const text = `[image: ${token.content || "untitled"}]`;
        if (href === null) {
          top.append(document.createTextNode(text));
        } else {
          const link = open({ tag: "a", attrGet: () => href });
          link.textContent = text;
          top.append(link);
        }
      } else {
        top.append(document.createTextNode(token.content || ""));
      }
    }
  }

  function render(text) {
    const root = document.createDocumentFragment();
    const stack = [root];
    const tokens = md.parse(String(text), {});
    for (let i = 0; i < tokens.length; i++) {
      const token = tokens[i];
      const top = stack[stack.length - 1];
      if (token.hidden) continue; // the paragraphs of a tight list
      if (token.nesting === 1) {
        const node = open(token);
        if (token.tag === "table") {
          const scroll = document.createElement("div");
          scroll.className = "table-scroll";
          scroll.append(node);
          top.append(scroll);
        } else {
          top.append(node);
        }
        stack.push(node);
      } else if (token.nesting === -1) {
        if (stack.length > 1) stack.pop();
      } else if (token.type === "inline") {
        const empty = top.childNodes.length === 0;
        if (empty && top.tagName === "LI") taskBox(top, token);
        else if (empty && top.tagName === "P" && top.parentElement && top.parentElement.tagName === "LI"
          && top.parentElement.firstChild === top) taskBox(top.parentElement, token);
        inline(token.children || [], top);
      } else if (token.type === "fence" || token.type === "code_block") {
        top.append(codeBlock(token));
      } else if (token.type === "hr") {
        top.append(document.createElement("hr"));
      } else {
        top.append(document.createTextNode(token.content || ""));
      }
    }
    return root;
  }

  window.renderMarkdown = render;
})();
