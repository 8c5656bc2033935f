// sharp as a peer encoder: the same icon files, encoded the way eleventy-img and Astro do by default
// (they pass no options, so sharp's own defaults apply: WebP quality 80, alphaQuality 100,
// effort 4; AVIF quality 50, effort 4, chroma 4:4:4, 8 bit). For bench/sharp_compare.py.
//
// Set-up, once (bench-only, kept out of git by bench/.gitignore; sharp's prebuilt libvips comes
// as an npm package of its own):
//   cd bench && npm install --no-package-lock --no-audit --no-fund
//
// Usage:
//   node bench/sharp_peer.mjs files.json [--out DIR] [--threads N]
//   printf '%s\n' icons/*.png | node bench/sharp_peer.mjs [--out DIR] [--threads N]
// Input: a JSON array of PNG paths (as a file argument, or on stdin), or one path a line on stdin.
// Output: each file's WebP and AVIF written to DIR (default: a new temp dir; the caller removes
// it), and on stdout one JSON object: versions, the settings, and per file the bytes and the ms
// of each encode (decode included, as sharp always decodes; one warm-up encode first, not
// counted). --threads sets sharp.concurrency (libvips threads per image; default: sharp's, the
// number of cores). The operation cache is off so every encode is done for real.

import { mkdtempSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { performance } from "node:perf_hooks";
import sharp from "sharp";

function parseArgs(argv) {
  const args = { file: null, out: null, threads: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--out") args.out = argv[++i];
    else if (a === "--threads") args.threads = Number(argv[++i]);
    else if (a === "-h" || a === "--help") {
      console.error("usage: node sharp_peer.mjs [files.json] [--out DIR] [--threads N]  (paths on stdin otherwise)");
      process.exit(0);
    } else if (a.startsWith("--")) throw new Error(`unknown option ${a}`);
    else args.file = a;
  }
  if (args.threads !== null && !(Number.isInteger(args.threads) && args.threads >= 0)) {
    throw new Error("--threads must be a whole number >= 0 (0 = sharp's default)");
  }
  return args;
}

function readPaths(file) {
  const text = readFileSync(file ?? 0, "utf8").trim();
  if (text.startsWith("[")) return JSON.parse(text).map(String);
  return text.split(/\r?\n/).map((line) => line.trim()).filter(Boolean);
}

// Exactly what the two tools call: .webp() / .avif() without options.
const ENCODERS = {
  webp: (input) => sharp(input).webp().toBuffer(),
  avif: (input) => sharp(input).avif().toBuffer(),
};
const SETTINGS = {
  webp: "sharp defaults: quality 80, alphaQuality 100, effort 4, lossless false, smartSubsample false (4:2:0)",
  avif: "sharp defaults: quality 50, effort 4, chromaSubsampling 4:4:4, bitdepth 8, lossless false",
};

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const paths = readPaths(args.file);
  if (paths.length === 0) throw new Error("no input files");
  sharp.cache(false);
  if (args.threads) sharp.concurrency(args.threads);
  const out = args.out ?? mkdtempSync(join(tmpdir(), "sharp-peer-"));
  mkdirSync(out, { recursive: true });

  const first = readFileSync(paths[0]);
  for (const encode of Object.values(ENCODERS)) await encode(first); // warm-up: library init, not counted

  const files = [];
  for (const [index, path] of paths.entries()) {
    const input = readFileSync(path);
    const record = { path, source_bytes: input.length };
    for (const [format, encode] of Object.entries(ENCODERS)) {
      const t = performance.now();
      const data = await encode(input);
      const ms = performance.now() - t;
      const target = join(out, `${String(index).padStart(5, "0")}-${basename(path, ".png")}.${format}`);
      writeFileSync(target, data);
      record[format] = { bytes: data.length, ms: Math.round(ms * 1000) / 1000, out: target };
    }
    files.push(record);
  }
  const result = {
    sharp: sharp.versions.sharp ?? null,
    versions: sharp.versions,
    node: process.versions.node,
    concurrency: sharp.concurrency(),
    settings: SETTINGS,
    out_dir: out,
    files,
  };
  process.stdout.write(JSON.stringify(result) + "\n");
}

main().catch((error) => {
  console.error(`sharp_peer: ${error.message}`);
  process.exit(1);
});
