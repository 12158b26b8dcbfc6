// Bus docs: label each table cell with its column (for the phone layout in extra.css), and
// let names in tables break after ".", "_" and "/" only, never in the middle of a word.
(function () {
  "use strict";

  function breakable(code) {
    if (code.dataset.busWbr || code.children.length) {
      return;
    }
    code.dataset.busWbr = "1";
    var parts = code.textContent.split(/(?<=[._\/])/);
    if (parts.length < 2) {
      return;
    }
    code.textContent = "";
    parts.forEach(function (part, index) {
      if (index > 0) {
        code.appendChild(document.createElement("wbr"));
      }
      code.appendChild(document.createTextNode(part));
    });
  }

  function prepare() {
    document.querySelectorAll(".md-typeset table:not([class])").forEach(function (table) {
      var heads = Array.prototype.map.call(table.querySelectorAll("thead th"), function (th) {
        return th.textContent.trim();
      });
      table.querySelectorAll("tbody tr").forEach(function (row) {
        Array.prototype.forEach.call(row.children, function (cell, index) {
          if (index > 0 && heads[index]) {
            cell.setAttribute("data-label", heads[index]);
          }
        });
      });
      table.querySelectorAll("td code, th code").forEach(breakable);
    });
  }

  if (typeof document$ !== "undefined") {
    document$.subscribe(prepare);  // Material's page-load stream (instant navigation too)
  } else {
    document.addEventListener("DOMContentLoaded", prepare);
  }
})();
