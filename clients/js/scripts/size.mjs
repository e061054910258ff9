#!/usr/bin/env node
// The size an app pays for the package: dist/ bundled and minified by esbuild (a
// devDependency used only here), then gzipped at level 9.
import { buildSync } from "esbuild";
import { gzipSync } from "node:zlib";

const { outputFiles } = buildSync({
  entryPoints: [new URL("../dist/index.js", import.meta.url).pathname],
  bundle: true,
  minify: true,
  format: "esm",
  write: false,
});
const code = outputFiles[0].contents;
const gzipped = gzipSync(code, { level: 9 }).length;
console.log(`dist/index.js minified: ${code.length} bytes; gzipped: ${gzipped} bytes`);
