/** The editor-independent core shared by the VS Code extension and the browser playground. */

export * from "./client.js";
export * from "./debounce.js";
export * from "./errors.js";
export * from "./positions.js";
export * from "./protocol.js";
export * from "./status.js";
export * from "./telemetry.js";
