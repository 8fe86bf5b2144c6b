"use strict";
// Sortable tables: a header with data-sort="num" or "text" sorts its column by the cells'
// data-value (missing numbers last), toggling between descending and ascending.
function sortTable(table, header) {
  const column = Array.prototype.indexOf.call(header.parentNode.children, header);
  const numeric = header.dataset.sort === "num";
  const descending = header.getAttribute("aria-sort") !== "descending";
  for (const other of table.querySelectorAll("th[data-sort]")) {
    other.removeAttribute("aria-sort");
  }
  header.setAttribute("aria-sort", descending ? "descending" : "ascending");
  const body = table.tBodies[0];
  const key = (row) => {
    const cell = row.cells[column];
    const raw = cell.dataset.value !== undefined ? cell.dataset.value : cell.textContent;
    return numeric ? parseFloat(raw) : raw.toLowerCase();
  };
  const rows = Array.from(body.rows);
  rows.sort((a, b) => {
    const ka = key(a);
    const kb = key(b);
    if (numeric) {
      if (Number.isNaN(ka)) return Number.isNaN(kb) ? 0 : 1;
      if (Number.isNaN(kb)) return -1;
      return descending ? kb - ka : ka - kb;
    }
    return descending ? kb.localeCompare(ka) : ka.localeCompare(kb);
  });
  for (const row of rows) body.appendChild(row);
}

for (const table of document.querySelectorAll("table.sortable")) {
  for (const header of table.querySelectorAll("th[data-sort]")) {
    header.tabIndex = 0;
    header.addEventListener("click", () => sortTable(table, header));
    header.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        sortTable(table, header);
      }
    });
  }
}

// Samples: the <select> of a table shows that prompt's answers and hides the others.
for (const select of document.querySelectorAll("select.prompt-select")) {
  select.addEventListener("change", () => {
    for (const sample of document.querySelectorAll(".sample")) {
      if (sample.dataset.group === select.dataset.group) {
        sample.hidden = sample.id !== select.value;
      }
    }
  });
}
