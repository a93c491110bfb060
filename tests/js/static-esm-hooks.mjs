// Module hooks for the page's scripts: src/hotcb/server/static/*.js are ES modules (the page
// loads them with <script type="module">), but no package.json there says so, and node 20 would
// read a .js file as CommonJS. This hook loads them as ES modules, unchanged: no build step.
import { readFile } from "node:fs/promises";

const STATIC = /\/src\/hotcb\/server\/static\/[^/]+\.js$/;

export async function load(url, context, nextLoad) {
  if (url.startsWith("file:") && STATIC.test(new URL(url).pathname)) {
    return { format: "module", source: await readFile(new URL(url)), shortCircuit: true };
  }
  return nextLoad(url, context);
}
