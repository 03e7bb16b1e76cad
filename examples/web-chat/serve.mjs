#!/usr/bin/env node
// Serves the web chat on http://127.0.0.1:8080 (PORT overrides): the page from this folder and
// the built SDK (clients/js/dist, `npm run build` there) under ./sdk/. Any static server does
// the same job: copy clients/js/dist to ./sdk next to index.html and serve the folder.
import http from "node:http";
import { readFile } from "node:fs/promises";
import { dirname, extname, join, normalize, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const sdk = resolve(here, "../../clients/js/dist");
const types = { ".html": "text/html; charset=utf-8", ".js": "text/javascript", ".map": "application/json" };
const port = Number(process.env.PORT ?? 8080);

const server = http
  .createServer(async (req, res) => {
    const path = normalize(decodeURIComponent(new URL(req.url, "http://x").pathname));
    if (path.includes("..")) return void res.writeHead(400).end();
    const file = path.startsWith("/sdk/") ? join(sdk, path.slice(5)) : join(here, path === "/" ? "index.html" : path);
    try {
      const body = await readFile(file);
      res.writeHead(200, { "content-type": types[extname(file)] ?? "application/octet-stream" }).end(body);
    } catch {
      res.writeHead(404, { "content-type": "text/plain" }).end("not found");
    }
  })
  .listen(port, "127.0.0.1", () => {
    const { port: actual } = server.address(); // PORT=0 picks a free one
    console.log(`web chat on http://127.0.0.1:${actual}/?server=ws://127.0.0.1:7070/v1/ws&uid=alice&room=lobby`);
  });
