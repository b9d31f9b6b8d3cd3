/**
 * One wording of the client's state for every host, so the VS Code status bar and the
 * playground's status line say the same thing in the same words.
 */

import type { ClientStatus } from "./client.js";

export type StatusKind = "off" | "connecting" | "connected" | "busy" | "error";

export interface StatusSummary {
  kind: StatusKind;
  /** Short, for a status bar: "Splice 42 ms". */
  text: string;
  /** Longer, for a tooltip: what is wrong and what to do. */
  detail: string;
}

export function describeStatus(status: ClientStatus, enabled = true, now: number = Date.now()): StatusSummary {
  if (!enabled || status.connection === "stopped") {
    return { kind: "off", text: "Splice off", detail: "Inline completions are turned off." };
  }
  const latency = status.completionMs ?? status.pingMs;
  const timing = [
    status.completionMs !== null ? `last completion ${Math.round(status.completionMs)} ms` : null,
    status.pingMs !== null ? `ping ${Math.round(status.pingMs)} ms` : null,
  ]
    .filter((part) => part !== null)
    .join(", ");
  switch (status.connection) {
    case "unauthorized":
      return {
        kind: "error",
        text: "Splice: unauthorized",
        detail: `${status.error?.message ?? "The server refused the API key."} Set the API key the server was started with (SPLICE_API_KEYS).`,
      };
    case "connecting":
      return { kind: "connecting", text: "Splice…", detail: `Connecting to ${status.url}` };
    case "reconnecting": {
      const wait = status.retryAt === null ? "" : ` Retrying in ${Math.max(0, Math.ceil((status.retryAt - now) / 1000))} s.`;
      return {
        kind: "error",
        text: "Splice: offline",
        detail: `${status.error?.message ?? `Not connected to ${status.url}.`}${wait} Is \`splice serve\` running?`,
      };
    }
    case "connected":
      if (status.busy) return { kind: "busy", text: "Splice…", detail: `Asking ${status.url} for a completion` };
      if (status.error) {
        return { kind: "error", text: `Splice: ${status.error.code}`, detail: status.error.message };
      }
      return {
        kind: "connected",
        text: latency === null ? "Splice" : `Splice ${Math.round(latency)} ms`,
        detail: `Connected to ${status.url}${timing ? ` (${timing})` : ""}`,
      };
  }
}
