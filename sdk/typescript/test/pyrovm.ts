// A real pyrovm for the integration tests: a child process with its own config,
// port, token file and runtime dir (in a temp dir), stopped with SIGTERM so it
// ends its VMs, snapshots and cgroups itself.

import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync, openSync, closeSync } from "node:fs";
import { createServer } from "node:net";
import { homedir, tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

/** The repository (this file runs from sdk/typescript/dist-test/). */
const REPO = fileURLToPath(new URL("../../../", import.meta.url));

export const PYROVM_BIN = process.env["PYROVM_BIN"] ?? join(REPO, "target/release/pyrovm");
export const IMAGE_DIR = process.env["TVM_IMAGE_DIR"] ?? join(homedir(), ".cache/tvm/current");

/** Why the integration tests cannot run here, or undefined when they can. */
export function missing(): string | undefined {
  if (!existsSync(PYROVM_BIN)) {
    return `no pyrovm binary at ${PYROVM_BIN} (build it with \`make build\`, or set PYROVM_BIN)`;
  }
  for (const f of ["vmlinux", "initramfs.cpio", "rootfs.erofs"]) {
    if (!existsSync(join(IMAGE_DIR, f))) {
      return `no guest image in ${IMAGE_DIR} (${f} is missing; \`make guest-image\` builds it, or set TVM_IMAGE_DIR)`;
    }
  }
  return undefined;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === "object" && addr ? resolve(addr.port) : reject(new Error("no port"))));
    });
  });
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export interface PyrovmOptions {
  /** Top-level TOML keys (before any table). */
  top?: string;
  /** Tables. */
  tables?: string;
  /** Wait until the pool's snapshot is ready (a slow start, then fast clones). */
  waitSnapshot?: boolean;
}

export class Pyrovm {
  readonly url: string;
  readonly token: string;
  readonly dir: string;
  readonly #proc: ChildProcess;
  readonly #kill: () => void;
  readonly #exited: Promise<number | null>;

  private constructor(url: string, token: string, dir: string, proc: ChildProcess) {
    this.url = url;
    this.token = token;
    this.dir = dir;
    this.#proc = proc;
    this.#exited = new Promise((resolve) => proc.once("exit", (code) => resolve(code)));
    // Never leave it running if the test process dies first.
    this.#kill = () => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGKILL");
    };
    process.once("exit", this.#kill);
  }

  static async start(opts: PyrovmOptions = {}): Promise<Pyrovm> {
    const dir = mkdtempSync(join(tmpdir(), "sdkts-"));
    const port = await freePort();
    const token = `sdk-test-${Math.random().toString(36).slice(2)}`;
    writeFileSync(join(dir, "tokens"), `${token}\n`);
    const config =
      `listen = "127.0.0.1:${port}"\n` +
      `runtime_dir = "${dir}/run"\n` +
      `image_dir = "${IMAGE_DIR}"\n` +
      `token_file = "${dir}/tokens"\n` +
      `boot_timeout_ms = 60000\n` +
      `drain_timeout_ms = 5000\n` +
      (opts.top ?? "") +
      (opts.tables ?? "");
    writeFileSync(join(dir, "pyrovm.toml"), config);
    const env = { ...process.env };
    for (const k of ["TVM_TOKENS", "TVM_LISTEN", "TVM_IMAGE_DIR", "TVM_LOG"]) delete env[k];
    const log = openSync(join(dir, "log"), "w");
    const proc = spawn(PYROVM_BIN, ["--config", join(dir, "pyrovm.toml")], {
      env,
      stdio: ["ignore", log, log],
    });
    closeSync(log);
    const server = new Pyrovm(`http://127.0.0.1:${port}`, token, dir, proc);
    try {
      await server.#waitHealthy(60_000);
      if (opts.waitSnapshot) await server.#waitSnapshot(180_000);
    } catch (e) {
      await server.stop();
      throw e;
    }
    return server;
  }

  async #waitHealthy(timeoutMs: number): Promise<void> {
    const end = Date.now() + timeoutMs;
    while (Date.now() < end) {
      if (this.#proc.exitCode !== null || this.#proc.signalCode !== null) {
        throw new Error(`pyrovm exited at start:\n${this.logTail()}`);
      }
      try {
        const res = await fetch(`${this.url}/healthz`);
        if (res.ok) return;
      } catch {
        // not listening yet
      }
      await sleep(100);
    }
    throw new Error(`pyrovm did not answer /healthz within ${timeoutMs} ms:\n${this.logTail()}`);
  }

  /** Waits for `tvm_snapshots_ready >= 1` (gives up quietly: requests then cold-boot). */
  async #waitSnapshot(timeoutMs: number): Promise<void> {
    const end = Date.now() + timeoutMs;
    while (Date.now() < end) {
      const res = await fetch(`${this.url}/metrics`, { headers: { authorization: `Bearer ${this.token}` } });
      const text = await res.text();
      const ready = text
        .split("\n")
        .filter((l) => l.startsWith("tvm_snapshots_ready"))
        .reduce((n, l) => n + Number(l.split(" ").pop()), 0);
      if (ready >= 1) return;
      await sleep(200);
    }
    console.log(`pyrovm: no snapshot within ${timeoutMs} ms; going on without`);
  }

  logTail(lines = 40): string {
    try {
      return readFileSync(join(this.dir, "log"), "utf8").split("\n").slice(-lines).join("\n");
    } catch {
      return "(no log)";
    }
  }

  /** SIGTERM, then SIGKILL after 30 s; removes the temp dir. */
  async stop(): Promise<void> {
    if (this.#proc.exitCode === null && this.#proc.signalCode === null) {
      this.#proc.kill("SIGTERM");
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<boolean>((resolve) => {
        timer = setTimeout(() => resolve(false), 30_000);
      });
      const done = await Promise.race([this.#exited.then(() => true), late]);
      clearTimeout(timer);
      if (!done) {
        console.log(`pyrovm did not stop within 30 s of SIGTERM; killing it\n${this.logTail()}`);
        this.#proc.kill("SIGKILL");
        await this.#exited;
      }
    }
    process.removeListener("exit", this.#kill);
    rmSync(this.dir, { recursive: true, force: true });
  }
}
