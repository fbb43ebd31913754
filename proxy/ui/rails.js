// What the rails did on one turn, read from the `guardrails` envelope (`log.activated_rails`
// and `log.stats`), and its rendering beside the answer.

import { el } from "./dom.js";

const SEVERITY = { allow: 0, error: 1, rewrite: 2, block: 3 };

/** A rail's decision word: allow, rewrite, block, or error (a failure whose policy allowed). */
function verdictOf(entry) {
  const decisions = Array.isArray(entry.decisions) ? entry.decisions.map(String) : [];
  if (entry.stop || decisions.some((d) => d === "block" || d.endsWith(": block"))) return "block";
  if (decisions.includes("rewrite")) return "rewrite";
  if (decisions.some((d) => d.startsWith("error") || d.startsWith("timeout"))) return "error";
  return "allow";
}

function reasonOf(entry) {
  const info = entry.additional_info;
  return info && typeof info === "object" && typeof info.reason === "string" ? info.reason : "";
}

/**
 * One row per rail and stage (a streamed answer's output rails check many windows: they
 * are counted, their times added), in the order the rails first ran.
 */
export function summarize(guardrails) {
  const log = guardrails && typeof guardrails === "object" ? guardrails.log : null;
  const activated = log && Array.isArray(log.activated_rails) ? log.activated_rails : [];
  const rows = new Map();
  for (const entry of activated) {
    if (!entry || typeof entry !== "object") continue;
    const stage = String(entry.type || "");
    const name = String(entry.name || "?");
    const key = `${stage}\u0000${name}`;
    const verdict = verdictOf(entry);
    const duration = typeof entry.duration === "number" ? entry.duration : 0;
    const row = rows.get(key);
    if (!row) {
      rows.set(key, { stage, name, verdict, checks: 1, duration, reason: reasonOf(entry) });
      continue;
    }
    row.checks += 1;
    row.duration += duration;
    if (SEVERITY[verdict] > SEVERITY[row.verdict]) {
      row.verdict = verdict;
      row.reason = reasonOf(entry) || row.reason;
    }
  }
  const list = [...rows.values()];
  const stats = log && log.stats && typeof log.stats === "object" ? log.stats : {};
  return {
    configId: guardrails ? guardrails.config_id || null : null,
    rows: list,
    blocked: list.find((r) => r.verdict === "block") || null,
    rewrote: list.filter((r) => r.verdict === "rewrite"),
    total: typeof stats.total_duration === "number" ? stats.total_duration : null,
  };
}

export function formatSeconds(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const ms = seconds * 1000;
  if (ms < 1) return `${ms.toFixed(2)} ms`;
  if (ms < 1000) return `${ms.toFixed(ms < 10 ? 1 : 0)} ms`;
  return `${(ms / 1000).toFixed(2)} s`;
}

const VERDICT_TEXT = { allow: "passed", rewrite: "rewrote", block: "blocked", error: "failed, allowed" };

/** The rails panel: a summary line that opens onto a table of every rail. */
export function railsPanel(summary) {
  const ran = summary.rows.length;
  let headline = ran === 0 ? "No rails ran" : `${ran} rail${ran === 1 ? "" : "s"} ran`;
  if (summary.blocked) headline += ` · blocked by ${summary.blocked.name}`;
  else if (summary.rewrote.length) headline += ` · rewritten by ${summary.rewrote.map((r) => r.name).join(", ")}`;
  else if (ran) headline += " · all passed";
  if (ran) headline += ` · rails ${formatSeconds(summary.rows.reduce((sum, r) => sum + r.duration, 0))}`;
  if (summary.total !== null) headline += ` · request ${formatSeconds(summary.total)}`;
  const details = el("details", { class: "rails" }, el("summary", {}, headline));
  if (summary.configId) details.append(el("p", { class: "muted" }, `config: ${summary.configId}`));
  if (!ran) return details;
  const body = el("tbody");
  for (const row of summary.rows) {
    const verdict = el("td", { class: `verdict ${row.verdict}` }, VERDICT_TEXT[row.verdict]);
    if (row.reason) verdict.append(el("span", { class: "reason" }, ` — ${row.reason}`));
    const name = row.checks > 1 ? `${row.name} (${row.checks} checks)` : row.name;
    body.append(
      el("tr", {}, el("td", {}, row.stage), el("td", {}, name), verdict, el("td", { class: "num" }, formatSeconds(row.duration))),
    );
  }
  details.append(
    el(
      "table",
      {},
      el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "stage"), el("th", { scope: "col" }, "rail"), el("th", { scope: "col" }, "verdict"), el("th", { scope: "col" }, "time"))),
      body,
    ),
  );
  return details;
}
