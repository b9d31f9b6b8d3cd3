// Builds the VS Code extension (dist/extension.js) and the browser playground (dist/playground/).
//
//   node build.mjs            one build
//   node build.mjs --watch    rebuild on change
//
// The extension is one CommonJS file for VS Code's Node host (`vscode` stays external; `ws` is
// bundled, so the .vsix needs no node_modules). The playground is static files the Splice
// server serves at /playground/: index.html, main.js + main.css (Monaco and the core client),
// editor.worker.js (Monaco's worker) and the codicon font, all referenced by relative URLs.

import * as esbuild from "esbuild";
import { copyFile, mkdir, rm } from "node:fs/promises";

const watch = process.argv.includes("--watch");

/** @type {esbuild.BuildOptions} */
const extension = {
  entryPoints: ["src/extension.ts"],
  outfile: "dist/extension.js",
  bundle: true,
  platform: "node",
  format: "cjs",
  target: "node18",
  external: [
    "vscode",
    // ws loads these optional native speed-ups inside try/catch and works without them.
    "bufferutil",
    "utf-8-validate",
  ],
  sourcemap: true,
  logLevel: "info",
};

/** @type {esbuild.BuildOptions} */
const playground = {
  entryPoints: {
    main: "src/playground/main.ts",
    "editor.worker": "node_modules/monaco-editor/esm/vs/editor/editor.worker.js",
  },
  outdir: "dist/playground",
  bundle: true,
  platform: "browser",
  format: "iife",
  target: "es2022",
  minify: !watch,
  sourcemap: watch,
  loader: { ".ttf": "file" },
  assetNames: "[name]-[hash]",
  logLevel: "info",
};

async function copyPage() {
  await mkdir("dist/playground", { recursive: true });
  await copyFile("src/playground/index.html", "dist/playground/index.html");
}

if (watch) {
  await copyPage();
  const contexts = await Promise.all([esbuild.context(extension), esbuild.context(playground)]);
  await Promise.all(contexts.map((ctx) => ctx.watch()));
  console.log("watching src/ (index.html is copied at start only)");
} else {
  await rm("dist", { recursive: true, force: true });
  await Promise.all([esbuild.build(extension), esbuild.build(playground)]);
  await copyPage();
}
