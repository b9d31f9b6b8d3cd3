// End-to-end: the playground in headless Chromium against a live Splice server.
//
// Starts `splice serve --port <free port>` from PATH (or uses SPLICE_E2E_URL), opens
// /playground/, types a function header, waits for the model's ghost text, accepts it with
// Tab, and checks that the server's copy of the document (GET /v1/documents) equals the
// editor's text and that the accept reached POST /v1/events. Writes a screenshot to
// e2e/artifacts/playground.png and the server's log to e2e/artifacts/server.log.
// Then the next-edit flow: it loads a small module, renames a local variable where it is assigned
// by typing, waits for the next-edit suggestion the pause after the edit asks for, applies it with
// Tab and checks the editor holds exactly the suggested edit and the server's copy equals the
// editor's again (e2e/artifacts/next-edit.png).
//
//   npm run e2e                                   (builds first)
//   SPLICE_E2E_URL=http://127.0.0.1:8600 node e2e/playground.e2e.mjs
//   CHROMIUM=/path/to/chrome node e2e/playground.e2e.mjs

import { spawn } from "node:child_process";
import { createWriteStream } from "node:fs";
import { mkdir } from "node:fs/promises";
import { createServer } from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const ROOT = dirname(dirname(fileURLToPath(import.meta.url)));
const ARTIFACTS = join(ROOT, "e2e", "artifacts");
const SCREENSHOT = join(ARTIFACTS, "playground.png");
const SERVER_LOG = join(ARTIFACTS, "server.log");
const HEALTH_TIMEOUT_MS = 300_000; // the first start converts the default model; CPU loads are slow
const GHOST_TIMEOUT_MS = 120_000; // debounce + prefill + decode of up to 64 tokens on a CPU
const SYNC_TIMEOUT_MS = 10_000;
const NEXT_EDIT_SCREENSHOT = join(ARTIFACTS, "next-edit.png");
const NEXT_EDIT_TEXT = [
  '"""Orders and their totals."""',
  "",
  "import json",
  "",
  "",
  "def summarize(orders):",
  "    count = 0",
  "    for order in orders:",
  "        count += 1",
  "    print(count)",
  "    return count",
  "",
  "",
  "def save(path, orders):",
  "    with open(path, 'w') as fh:",
  "        json.dump(orders, fh)",
  "",
].join("\n");
const NEXT_EDIT_RENAME = { line: 7, column: "    count".length + 1, from: "count", to: "total" }; // 1-based, Monaco's

class E2EFailure extends Error {}

function fail(message) {
  throw new E2EFailure(message);
}

function step(message) {
  console.log(`[e2e] ${message}`);
}

function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Poll `probe` until it returns a truthy value or `timeoutMs` passes; returns the value or null. */
async function poll(probe, timeoutMs, intervalMs = 250) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() >= deadline) return null;
    await sleep(intervalMs);
  }
}

// -- the server ----------------------------------------------------------------------------------

/** A `splice serve` child whose output goes to server.log and a tail kept for error messages. */
class ServerProcess {
  constructor(port) {
    this.port = port;
    this.tail = [];
    this.exit = null;
    const log = createWriteStream(SERVER_LOG);
    this.child = spawn("splice", ["serve", "--host", "127.0.0.1", "--port", String(port)], {
      env: { ...process.env, SPLICE_PLAYGROUND_DIR: join(ROOT, "dist", "playground") },
      stdio: ["ignore", "pipe", "pipe"],
      detached: true, // its own process group, so the kill reaches uvicorn's workers too
    });
    const keep = (chunk) => {
      log.write(chunk);
      this.tail.push(...chunk.toString().split("\n").filter(Boolean));
      this.tail.splice(0, Math.max(0, this.tail.length - 30));
    };
    this.child.stdout.on("data", keep);
    this.child.stderr.on("data", keep);
    this.exited = new Promise((resolve) => {
      this.child.on("error", (err) => {
        this.exit = err.code === "ENOENT" ? "`splice` is not on PATH (activate the project's virtualenv)" : err.message;
        resolve();
      });
      this.child.on("exit", (code, signal) => {
        this.exit ??= `exited with ${signal ?? `code ${code}`}`;
        log.end();
        resolve();
      });
    });
  }

  describe() {
    return `splice serve ${this.exit ?? "is running"}; last lines of ${SERVER_LOG}:\n  ${this.tail.join("\n  ")}`;
  }

  async stop() {
    if (this.exit !== null || this.child.pid === undefined) return;
    const group = -this.child.pid;
    try {
      process.kill(group, "SIGTERM");
    } catch {
      return; // already gone
    }
    const stopped = await Promise.race([this.exited.then(() => true), sleep(10_000).then(() => false)]);
    if (!stopped) {
      try {
        process.kill(group, "SIGKILL");
      } catch {
        // gone between the check and the kill
      }
      await this.exited;
    }
  }
}

async function waitForHealth(base, server) {
  step(`waiting for ${base}/v1/health (up to ${HEALTH_TIMEOUT_MS / 1000} s while the model loads)`);
  let lastError = "no answer yet";
  const health = await poll(async () => {
    if (server?.exit) fail(`the server stopped before it was healthy: ${server.describe()}`);
    try {
      const response = await fetch(`${base}/v1/health`);
      if (response.ok) return await response.json();
      lastError = `HTTP ${response.status}`;
    } catch (err) {
      lastError = err.cause?.code ?? err.message;
    }
    return null;
  }, HEALTH_TIMEOUT_MS, 1000);
  if (!health) {
    fail(`${base}/v1/health did not answer 200 within ${HEALTH_TIMEOUT_MS / 1000} s (last: ${lastError})` +
      (server ? `\n${server.describe()}` : ""));
  }
  step(`server healthy: model ${health.model} on ${health.device} (${health.dtype})`);
}

// -- the browser ---------------------------------------------------------------------------------

/**
 * The suggestion as Monaco draws it (runs in the page): the first line is the
 * `.ghost-text-decoration` tokens after the cursor, each further line a row of `.ghost-text`
 * tokens in a view zone below.
 */
function readGhostText() {
  const text = (elements) => elements.map((e) => e.textContent).join("").replaceAll("\u00a0", " ");
  const first = text([...document.querySelectorAll(".ghost-text-decoration")]);
  const rows = new Map();
  for (const token of document.querySelectorAll(".ghost-text")) {
    const row = token.closest(".view-line") ?? token.parentElement;
    rows.set(row, [...(rows.get(row) ?? []), token]);
  }
  return [first, ...[...rows.values()].map(text)].join("\n");
}

async function runPlayground(base, browser) {
  const page = await browser.newPage({ viewport: { width: 1200, height: 700 } });
  const consoleLines = [];
  page.on("console", (message) => consoleLines.push(`${message.type()}: ${message.text()}`));
  page.on("pageerror", (err) => consoleLines.push(`pageerror: ${err.message}`));
  const diagnostics = () => `browser console:\n  ${consoleLines.slice(-20).join("\n  ") || "(empty)"}`;

  try {
    step(`opening ${base}/playground`);
    const response = await page.goto(`${base}/playground`, { waitUntil: "load" });
    if (!response?.ok()) {
      fail(`GET ${base}/playground answered ${response?.status()}: ${(await response?.text())?.slice(0, 300)}`);
    }
    await page.waitForFunction(() => window.spliceEditor && window.spliceClient, null, { timeout: 30_000 }).catch(() =>
      fail(`the playground did not start (no window.spliceEditor / window.spliceClient)\n${diagnostics()}`),
    );
    await page
      .waitForFunction(() => window.spliceClient.status.connection === "connected", null, { timeout: 30_000 })
      .catch(async () => {
        const status = await page.evaluate(() => JSON.stringify(window.spliceClient.status));
        fail(`the playground did not connect to ${base}/v1/documents: status ${status}\n${diagnostics()}`);
      });
    const uri = await page.evaluate(() => window.spliceDocumentUri);

    step("typing into the editor");
    await page.click(".monaco-editor .view-lines");
    await page.keyboard.press("Control+End");
    await page.keyboard.type("def fibonacci(n):\n", { delay: 40 }); // Enter: Monaco indents the body

    step(`waiting for ghost text (up to ${GHOST_TIMEOUT_MS / 1000} s)`);
    const ghost = page.locator(".ghost-text-decoration, .ghost-text").first();
    await ghost.waitFor({ state: "visible", timeout: GHOST_TIMEOUT_MS }).catch(async () => {
      const status = await page.evaluate(() => JSON.stringify(window.spliceClient.status));
      fail(`no ghost text appeared within ${GHOST_TIMEOUT_MS / 1000} s; client status ${status}\n${diagnostics()}`);
    });
    const ghostText = await page.evaluate(readGhostText);
    step(`ghost text: ${JSON.stringify(ghostText.slice(0, 120))}`);
    await mkdir(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: SCREENSHOT });
    step(`screenshot: ${SCREENSHOT}`);

    const before = await page.evaluate(() => window.spliceEditor.getValue());
    await page.keyboard.press("Tab");
    const after = await poll(async () => {
      const value = await page.evaluate(() => window.spliceEditor.getValue());
      return value !== before ? value : null;
    }, 5_000);
    if (after === null) fail(`Tab did not accept the suggestion: the editor text did not change\n${diagnostics()}`);
    const accepted = after.slice(before.length);
    if (!after.startsWith(before) || sameLines(accepted) !== sameLines(ghostText)) {
      fail(
        `after Tab the editor does not hold the suggestion that was shown.\n  before: ${JSON.stringify(before)}\n` +
          `  shown:  ${JSON.stringify(ghostText)}\n  after:  ${JSON.stringify(after)}`,
      );
    }
    step(`accepted: ${JSON.stringify(after.slice(before.length).slice(0, 120))}`);

    await expectServerCopy(base, page, uri);

    step("checking that the accept reached POST /v1/events");
    const selected = await poll(async () => {
      const metrics = await (await fetch(`${base}/metrics`)).text();
      const line = metrics.split("\n").find((l) => l.startsWith('splice_events_total{type="select"}'));
      return line && Number(line.split(" ").at(-1)) >= 1 ? line : null;
    }, SYNC_TIMEOUT_MS);
    if (!selected) fail(`no select event was recorded by the server (splice_events_total{type="select"})\n${diagnostics()}`);
    step(selected);

    await runNextEdit(base, page, uri, diagnostics);
  } finally {
    await page.close();
  }
}

async function expectServerCopy(base, page, uri) {
  step("comparing the server's copy with the editor");
  let last = null;
  const synced = await poll(async () => {
    const editorText = await page.evaluate(() => window.spliceEditor.getValue());
    const response = await fetch(`${base}/v1/documents?uri=${encodeURIComponent(uri)}`);
    if (!response.ok) {
      last = `GET /v1/documents answered ${response.status}: ${(await response.text()).slice(0, 300)}`;
      return null;
    }
    const doc = await response.json();
    last = { server: doc.text, editor: editorText, version: doc.version };
    return doc.text === editorText && doc.uri === uri ? doc : null;
  }, SYNC_TIMEOUT_MS);
  if (!synced) {
    fail(
      typeof last === "string"
        ? last
        : `the server's copy (version ${last?.version}) differs from the editor:\n  server: ${JSON.stringify(last?.server)}\n  editor: ${JSON.stringify(last?.editor)}`,
    );
  }
  step(`server copy equals the editor text (version ${synced.version}, language ${synced.languageId})`);
}

/** Next edit: an edit, a pause, the suggestion shown, Tab applies it, the server follows. */
async function runNextEdit(base, page, uri, diagnostics) {
  step("next edit: loading a module and renaming a variable where it is assigned");
  await page.evaluate(
    ({ text, at }) => {
      const editor = window.spliceEditor;
      editor.getModel().setValue(text);
      editor.setPosition({ lineNumber: at.line, column: at.column });
      editor.focus();
    },
    { text: NEXT_EDIT_TEXT, at: NEXT_EDIT_RENAME },
  );
  await sleep(300);
  for (let i = 0; i < NEXT_EDIT_RENAME.from.length; i++) await page.keyboard.press("Backspace");
  await page.keyboard.type(NEXT_EDIT_RENAME.to, { delay: 40 });
  await page.keyboard.press("Escape"); // no inline completion in the way of Tab
  step(`waiting for a next-edit suggestion (up to ${GHOST_TIMEOUT_MS / 1000} s)`);
  const shown = await poll(() => page.evaluate(() => window.spliceNextEdit.shown()), GHOST_TIMEOUT_MS, 250);
  if (!shown) {
    const info = await page.evaluate(() => document.getElementById("next-edit-info")?.textContent);
    fail(`no next-edit suggestion was shown within ${GHOST_TIMEOUT_MS / 1000} s (${info})\n${diagnostics()}`);
  }
  await page.locator(".splice-next-edit-new").first().waitFor({ state: "visible", timeout: 5_000 }).catch(async () => {
    const drawn = await page.evaluate(() => ({
      old: document.querySelectorAll(".splice-next-edit-old").length,
      new: document.querySelectorAll(".splice-next-edit-new").length,
      html: document.querySelector(".view-lines")?.innerHTML.slice(0, 3000),
    }));
    await page.screenshot({ path: NEXT_EDIT_SCREENSHOT });
    fail(`a suggestion is held but not drawn: ${JSON.stringify(shown)}; drawn ${JSON.stringify(drawn)}`);
  });
  step(`suggestion: replace ${JSON.stringify(shown.range)} with ${JSON.stringify(shown.text)}`);
  await page.screenshot({ path: NEXT_EDIT_SCREENSHOT });
  step(`screenshot: ${NEXT_EDIT_SCREENSHOT}`);
  const expected = await page.evaluate((edit) => {
    const model = window.spliceEditor.getModel();
    const start = model.getOffsetAt({ lineNumber: edit.range.start.line + 1, column: edit.range.start.character + 1 });
    const end = model.getOffsetAt({ lineNumber: edit.range.end.line + 1, column: edit.range.end.character + 1 });
    const text = model.getValue();
    return text.slice(0, start) + edit.text + text.slice(end);
  }, shown);
  await page.keyboard.press("Tab");
  const after = await poll(async () => {
    const value = await page.evaluate(() => window.spliceEditor.getValue());
    return value === expected ? value : null;
  }, 5_000);
  if (after === null) {
    const value = await page.evaluate(() => window.spliceEditor.getValue());
    fail(`Tab did not apply the next edit.\n  expected: ${JSON.stringify(expected)}\n  editor:   ${JSON.stringify(value)}`);
  }
  step(`applied: the editor now reads ${JSON.stringify(after.slice(0, 200))}`);
  await expectServerCopy(base, page, uri);
}

/** Monaco draws no tokens for a blank suggestion line, and may drop trailing spaces: compare without them. */
function sameLines(text) {
  return text
    .split("\n")
    .map((line) => line.trimEnd())
    .filter(Boolean)
    .join("\n");
}

// -- main ----------------------------------------------------------------------------------------

async function main() {
  await mkdir(ARTIFACTS, { recursive: true });
  let server = null;
  let browser = null;
  const cleanup = async () => {
    await browser?.close().catch(() => undefined);
    await server?.stop();
  };
  for (const signal of ["SIGINT", "SIGTERM"]) {
    process.once(signal, () => void cleanup().finally(() => process.exit(130)));
  }
  try {
    let base = process.env.SPLICE_E2E_URL?.replace(/\/$/, "");
    if (!base) {
      const port = await freePort();
      step(`starting splice serve on port ${port} (log: ${SERVER_LOG})`);
      server = new ServerProcess(port);
      base = `http://127.0.0.1:${port}`;
    }
    await waitForHealth(base, server);
    const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
    browser = await chromium
      .launch({
        executablePath,
        args: ["--headless=new", "--no-sandbox", "--disable-background-networking", "--disable-dev-shm-usage", "--disable-gpu"],
      })
      .catch((err) => fail(`could not start Chromium at ${executablePath} (set CHROMIUM=...): ${err.message}`));
    await runPlayground(base, browser);
  } finally {
    await cleanup();
  }
}

main().then(
  () => {
    console.log("e2e: 1 passed, 0 failed");
    process.exit(0);
  },
  (err) => {
    console.error(`\n[e2e] FAILED: ${err instanceof E2EFailure ? err.message : err.stack}`);
    console.log("e2e: 0 passed, 1 failed");
    process.exit(1);
  },
);
