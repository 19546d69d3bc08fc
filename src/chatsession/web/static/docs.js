"use strict";
// A small offline reader of the OpenAPI schema: every path, its method, summary and parameters.
(async () => {
  const main = document.getElementById("paths");
  const schema = await (await fetch("/openapi.json")).json();
  main.textContent = "";
  const el = (tag, text, cls) => {
    const node = document.createElement(tag);
    if (text !== undefined) node.textContent = text;
    if (cls) node.className = cls;
    return node;
  };
  for (const [path, methods] of Object.entries(schema.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const section = el("section", undefined, "endpoint");
      const h = el("h2");
      h.append(el("span", method.toUpperCase(), "method"), " ", el("code", path));
      section.append(h);
      if (op.summary) section.append(el("p", op.summary, "summary"));
      if (op.description) section.append(el("p", op.description));
      const params = op.parameters || [];
      if (params.length) {
        const list = el("ul");
        for (const p of params) {
          list.append(el("li", `${p.name} (${p.in})${p.required ? ", required" : ""}: ${(p.schema && p.schema.description) || p.description || ""}`));
        }
        section.append(list);
      }
      const codes = Object.keys(op.responses || {}).join(", ");
      section.append(el("p", `Responses: ${codes}`, "note"));
      main.append(section);
    }
  }
})();
