import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    environment: "node",
    // One worker: the machines this runs on are small and the suite takes a second anyway.
    pool: "threads",
    maxWorkers: 1,
  },
});
