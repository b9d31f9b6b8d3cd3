import { fileURLToPath } from "node:url";
import { defineConfig } from "vitest/config";

export default defineConfig({
  resolve: {
    // The real `vscode` module exists only inside VS Code; tests get a recording stand-in.
    alias: { vscode: fileURLToPath(new URL("./test/vscode-mock.ts", import.meta.url)) },
  },
  test: {
    include: ["test/**/*.test.ts"],
    environment: "node",
    // One worker: the machines this runs on are small and the suite takes a second anyway.
    pool: "threads",
    maxWorkers: 1,
  },
});
