import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { restBaseUrl, TelemetryReporter, type FetchLike } from "../src/core/telemetry.js";

interface Call {
  url: string;
  headers: Record<string, string>;
  body: unknown;
}

function recordingFetch(answer: (call: Call) => Promise<{ ok: boolean; status: number }> | { ok: boolean; status: number }) {
  const calls: Call[] = [];
  const fetch: FetchLike = async (url, init) => {
    const call = { url, headers: init.headers, body: JSON.parse(init.body) as unknown };
    calls.push(call);
    const response = await answer(call);
    return { ...response, text: async () => `{"error":{"code":"x","message":"status ${response.status}"}}` };
  };
  return { calls, fetch };
}

beforeEach(() => vi.useFakeTimers());
afterEach(() => vi.useRealTimers());

describe("restBaseUrl", () => {
  it("maps the WebSocket URL to the HTTP base of the same server", () => {
    expect(restBaseUrl("ws://127.0.0.1:8600/v1/documents")).toBe("http://127.0.0.1:8600");
    expect(restBaseUrl("wss://splice.example:443/v1/documents")).toBe("https://splice.example");
    expect(restBaseUrl("wss://host/proxy/splice/v1/documents/")).toBe("https://host/proxy/splice");
    expect(restBaseUrl("ws://[::1]:9000/v1/documents?api_key=k")).toBe("http://[::1]:9000");
  });
});

describe("TelemetryReporter", () => {
  it("gathers events and posts them in order after the flush delay", async () => {
    const { calls, fetch } = recordingFetch(() => ({ ok: true, status: 200 }));
    const reporter = new TelemetryReporter({ baseUrl: "http://h:1/", apiKey: "k", fetch, flushDelayMs: 500 });
    reporter.view("r-1");
    reporter.select("r-1", 812.6);
    reporter.dismiss("r-2", 40);
    await vi.advanceTimersByTimeAsync(499);
    expect(calls).toHaveLength(0);
    await vi.advanceTimersByTimeAsync(1);
    expect(calls.map((c) => c.body)).toEqual([
      { type: "view", completion_id: "r-1", choice_index: 0 },
      { type: "select", completion_id: "r-1", choice_index: 0, elapsed_ms: 813 },
      { type: "dismiss", completion_id: "r-2", choice_index: 0, elapsed_ms: 40 },
    ]);
    expect(calls[0]!.url).toBe("http://h:1/v1/events");
    expect(calls[0]!.headers).toEqual({ "Content-Type": "application/json", Authorization: "Bearer k" });
  });

  it("sends a view once per completion", async () => {
    const { calls, fetch } = recordingFetch(() => ({ ok: true, status: 200 }));
    const reporter = new TelemetryReporter({ baseUrl: "http://h", fetch });
    reporter.view("a");
    reporter.view("a");
    reporter.view("b");
    await reporter.flush();
    expect(calls.map((c) => (c.body as { completion_id: string }).completion_id)).toEqual(["a", "b"]);
  });

  it("never throws: failures are logged once per streak and dropped", async () => {
    const log: string[] = [];
    let down = true;
    const { calls, fetch } = recordingFetch(() => {
      if (down) throw new TypeError("fetch failed");
      return { ok: true, status: 200 };
    });
    const reporter = new TelemetryReporter({ baseUrl: "http://h", fetch, log: (l, m) => log.push(`${l}: ${m}`) });
    reporter.select("a");
    reporter.select("b");
    await expect(reporter.flush()).resolves.toBeUndefined();
    expect(calls).toHaveLength(2);
    expect(log).toEqual(["warn: POST http://h/v1/events failed: fetch failed"]);
    down = false;
    reporter.select("c");
    await reporter.flush();
    expect(log.at(-1)).toBe("info: telemetry is reaching the server again");
  });

  it("reports an HTTP error with the server's message", async () => {
    const log: string[] = [];
    const { fetch } = recordingFetch(() => ({ ok: false, status: 401 }));
    const reporter = new TelemetryReporter({ baseUrl: "http://h", fetch, log: (_, m) => log.push(m) });
    reporter.dismiss("a");
    await reporter.flush();
    expect(log).toEqual(['POST http://h/v1/events answered 401: {"error":{"code":"x","message":"status 401"}}']);
  });

  it("keeps at most maxQueue events, dropping the oldest, and says so", async () => {
    const log: string[] = [];
    const { calls, fetch } = recordingFetch(() => ({ ok: true, status: 200 }));
    const reporter = new TelemetryReporter({ baseUrl: "http://h", fetch, maxQueue: 2, log: (_, m) => log.push(m) });
    for (const id of ["a", "b", "c", "d"]) reporter.select(id);
    await reporter.flush();
    expect(calls.map((c) => (c.body as { completion_id: string }).completion_id)).toEqual(["c", "d"]);
    expect(log[0]).toMatch(/dropped 2 telemetry event\(s\)/);
  });

  it("events recorded while a request is out are sent after it, one request at a time", async () => {
    let release: () => void = () => {};
    let inFlight = 0;
    let most = 0;
    const { calls, fetch } = recordingFetch(
      () =>
        new Promise((resolve) => {
          most = Math.max(most, ++inFlight);
          release = () => {
            inFlight--;
            resolve({ ok: true, status: 200 });
          };
        }),
    );
    const reporter = new TelemetryReporter({ baseUrl: "http://h", fetch });
    reporter.select("a");
    const done = reporter.flush();
    reporter.select("b");
    expect(calls).toHaveLength(1);
    release();
    await vi.waitFor(() => expect(calls).toHaveLength(2));
    release();
    await done;
    await reporter.dispose();
    expect(calls.map((c) => (c.body as { completion_id: string }).completion_id)).toEqual(["a", "b"]);
    expect(most).toBe(1);
  });
});
