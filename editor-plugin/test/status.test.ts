import { describe, expect, it } from "vitest";
import type { ClientStatus } from "../src/core/client.js";
import { describeStatus } from "../src/core/status.js";

const base: ClientStatus = {
  connection: "connected",
  url: "ws://h:1/v1/documents",
  busy: false,
  pingMs: 3.4,
  completionMs: null,
  error: null,
  retryAt: null,
};

describe("describeStatus", () => {
  it("shows the latest latency when connected", () => {
    expect(describeStatus(base)).toMatchObject({ kind: "connected", text: "Splice 3 ms" });
    expect(describeStatus({ ...base, completionMs: 420 })).toEqual({
      kind: "connected",
      text: "Splice 420 ms",
      detail: "Connected to ws://h:1/v1/documents (last completion 420 ms, ping 3 ms)",
    });
  });

  it("busy, off and errors", () => {
    expect(describeStatus({ ...base, busy: true }).kind).toBe("busy");
    expect(describeStatus(base, false).kind).toBe("off");
    expect(describeStatus({ ...base, error: { code: "queue_full", message: "busy" } })).toMatchObject({
      kind: "error",
      text: "Splice: queue_full",
    });
    const offline = describeStatus(
      { ...base, connection: "reconnecting", retryAt: 5000, error: { code: "disconnected", message: "ECONNREFUSED" } },
      true,
      1500,
    );
    expect(offline).toEqual({
      kind: "error",
      text: "Splice: offline",
      detail: "ECONNREFUSED Retrying in 4 s. Is `splice serve` running?",
    });
    expect(describeStatus({ ...base, connection: "unauthorized" }).detail).toMatch(/SPLICE_API_KEYS/);
  });
});
