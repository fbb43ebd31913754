// Building DOM nodes. Text is only ever set as text (textContent), never parsed as HTML.

/**
 * el("p", {class: "x", hidden: true}, "text", childNode) -> <p class="x" hidden>text…</p>
 * Attributes are set with setAttribute; strings among the children become text nodes.
 */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === false || value === null || value === undefined) continue;
    node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

export function clear(node) {
  node.replaceChildren();
}
