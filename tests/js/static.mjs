// The page's modules, for node tests: `import { charts, panels, lib, tune, autopilot } from "./static.mjs"`.
// Only modules without DOM work at import time load here (app.js and api.js touch the page).
import { register } from "node:module";

register("./static-esm-hooks.mjs", import.meta.url);

const dir = new URL("../../src/hotcb/server/static/", import.meta.url);
export const charts = await import(new URL("charts.js", dir).href);
export const panels = await import(new URL("panels.js", dir).href);
export const lib = await import(new URL("lib.js", dir).href);
export const tune = await import(new URL("tune.js", dir).href);
export const autopilot = await import(new URL("autopilot.js", dir).href);
