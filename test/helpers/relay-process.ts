/**
 * Starts the built relay (`node dist/main.js`, run `npm run build` first — `npm test` does) as a child
 * process with a given environment, waits for its `relay:ready` log line, and keeps its JSON log lines.
 * Used by every end-to-end test that needs a real process (kill -9, restart, SIGTERM, bad config).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

export const ROOT = path.resolve(__dirname, '..', '..');
export const MAIN = path.join(ROOT, 'dist', 'main.js');
export const TEST_CA = path.join(ROOT, 'test', 'fixtures', 'tls', 'ca.crt');

export interface RelayProcess {
  child: ChildProcess;
  smtpPort: number;
  metricsPort: number;
  spoolDir: string;
  env: Record<string, string>;
  /** Parsed JSON log lines so far. */
  logs: Array<Record<string, unknown>>;
  /** Raw stderr so far. */
  stderr(): string;
  /** Resolves with the exit code (or signal name) once the process has exited. */
  exited: Promise<number | string>;
  waitForLog(
    predicate: (line: Record<string, unknown>) => boolean,
    timeoutMs?: number,
  ): Promise<Record<string, unknown>>;
  kill(signal?: NodeJS.Signals): void;
  metrics(): Promise<string>;
}

/** A free TCP port on 127.0.0.1 (bind to 0, read, close). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

export function tempDir(prefix = 'ses-relay-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/** Environment pointing the relay at a fake SES (see test/helpers/fake-ses.ts). */
export function fakeSesEnv(port: number): Record<string, string> {
  return {
    AWS_SMTP_HOST: '127.0.0.1',
    AWS_SMTP_PORT: String(port),
    AWS_SMTP_USERNAME: 'AKIAFAKE',
    AWS_SMTP_PASSWORD: 'fake-secret',
    NODE_EXTRA_CA_CERTS: TEST_CA,
  };
}

export interface StartRelayOptions {
  env?: Record<string, string>;
  spoolDir?: string;
  smtpPort?: number;
  metricsPort?: number;
  /** Wait for `relay:ready` (default true). */
  waitReady?: boolean;
  timeoutMs?: number;
}

export async function startRelayProcess(options: StartRelayOptions = {}): Promise<RelayProcess> {
  if (!fs.existsSync(MAIN)) throw new Error(`${MAIN} is missing: run npm run build first`);
  const smtpPort = options.smtpPort ?? (await freePort());
  const metricsPort = options.metricsPort ?? (await freePort());
  const spoolDir = options.spoolDir ?? tempDir();
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    HOME: process.env.HOME ?? '/tmp',
    SMTP_HOST: '127.0.0.1',
    SMTP_PORT: String(smtpPort),
    METRICS_HOST: '127.0.0.1',
    METRICS_PORT: String(metricsPort),
    SPOOL_DIR: spoolDir,
    OUTBOX_DIR: path.join(spoolDir, 'outbox'),
    SERVER_FQDN: 'relay.test',
    LOG_LEVEL: 'info',
    SHUTDOWN_TIMEOUT: '10s',
    ...options.env,
  };
  const child = spawn(process.execPath, [MAIN], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const logs: Array<Record<string, unknown>> = [];
  const waiters: Array<{
    pred: (l: Record<string, unknown>) => boolean;
    resolve: (l: Record<string, unknown>) => void;
  }> = [];
  let stderr = '';
  let buf = '';
  child.stdout!.setEncoding('utf8');
  child.stdout!.on('data', (chunk: string) => {
    buf += chunk;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      let parsed: Record<string, unknown>;
      try {
        parsed = JSON.parse(line) as Record<string, unknown>;
      } catch {
        parsed = { raw: line };
      }
      logs.push(parsed);
      for (const w of [...waiters]) {
        if (w.pred(parsed)) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(parsed);
        }
      }
    }
  });
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (c: string) => (stderr += c));
  const exited = new Promise<number | string>((resolve) =>
    child.once('exit', (code, signal) => resolve(code ?? signal ?? 'unknown')),
  );

  const waitForLog = (pred: (l: Record<string, unknown>) => boolean, timeoutMs = 15_000) => {
    const found = logs.find(pred);
    if (found) return Promise.resolve(found);
    return new Promise<Record<string, unknown>>((resolve, reject) => {
      const w = { pred, resolve };
      waiters.push(w);
      const timer = setTimeout(() => {
        waiters.splice(waiters.indexOf(w), 1);
        reject(new Error(`timed out waiting for a log line; stderr: ${stderr.slice(-2000)}`));
      }, timeoutMs);
      timer.unref();
      void exited.then((code) => {
        if (waiters.includes(w)) {
          waiters.splice(waiters.indexOf(w), 1);
          clearTimeout(timer);
          reject(new Error(`relay exited (${code}) before the log line; stderr: ${stderr.slice(-2000)}`));
        }
      });
    });
  };

  const relay: RelayProcess = {
    child,
    smtpPort,
    metricsPort,
    spoolDir,
    env,
    logs,
    stderr: () => stderr,
    exited,
    waitForLog,
    kill: (signal = 'SIGTERM') => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    },
    metrics: async () => {
      const res = await fetch(`http://127.0.0.1:${metricsPort}/metrics`);
      return res.text();
    },
  };
  if (options.waitReady !== false) {
    try {
      await waitForLog((l) => l.event === 'relay:ready', options.timeoutMs ?? 15_000);
    } catch (err) {
      relay.kill('SIGKILL');
      throw err;
    }
  }
  return relay;
}

/** Value of a metric sample in Prometheus text (sum over label sets when labels are not given). */
export function metricValue(text: string, name: string, labels?: Record<string, string>): number {
  let total = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = /^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+([^\s]+)/.exec(line);
    if (!m || m[1] !== name) continue;
    if (labels) {
      const l = m[2] ?? '';
      if (!Object.entries(labels).every(([k, v]) => l.includes(`${k}="${v}"`))) continue;
    }
    total += Number(m[3]);
  }
  return total;
}

/** Stop a relay and wait for it (SIGKILL after timeoutMs). */
export async function stopRelayProcess(relay: RelayProcess, timeoutMs = 15_000): Promise<number | string> {
  relay.kill('SIGTERM');
  const timer = setTimeout(() => relay.kill('SIGKILL'), timeoutMs);
  const code = await relay.exited;
  clearTimeout(timer);
  return code;
}
