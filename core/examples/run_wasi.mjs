// Runs a wasm32-wasip1 program under Node's WASI (V8, the same engine as Envoy's Wasm runtime).
// Usage: node core/examples/run_wasi.mjs <file.wasm> [--cpu-clock] [arguments for the program...]
// --cpu-clock answers the program's monotonic clock (Rust's `Instant`) with this thread's CPU time, so timings
// leave out time spent waiting for a core: on a machine shared with other builds, wall time mostly measures them.
// `cargo xtask test` runs edgewarden-core's unit tests with it (a test module is a program too); the exit status is
// the program's.
import { readFile } from "node:fs/promises";
import { basename } from "node:path";
import { setFlagsFromString } from "node:v8";
import { WASI } from "node:wasi";

const CLOCK_MONOTONIC = 1;
const CLOCK_THREAD_CPUTIME = 3;

const file = process.argv[2];
const rest = process.argv.slice(3).filter((arg) => arg !== "--cpu-clock");
const wasi = new WASI({ version: "preview1", args: [basename(file), ...rest], env: {}, returnOnExit: true });
const imports = wasi.getImportObject();
if (process.argv.includes("--cpu-clock")) {
  const preview1 = imports.wasi_snapshot_preview1;
  const clockTimeGet = preview1.clock_time_get;
  preview1.clock_time_get = (id, precision, out) =>
    clockTimeGet(id === CLOCK_MONOTONIC ? CLOCK_THREAD_CPUTIME : id, precision, out);
}
// The filter is built with relaxed SIMD, which V8 ships from 11.4 (Node 21); Node 20 has it behind a flag.
const [v8Major, v8Minor] = process.versions.v8.split(".").map(Number);
if (v8Major < 11 || (v8Major === 11 && v8Minor < 4)) {
  setFlagsFromString("--experimental-wasm-relaxed-simd");
}
const module = await WebAssembly.compile(await readFile(file));
const instance = await WebAssembly.instantiate(module, imports);
process.exitCode = wasi.start(instance);
