/**
 * A real `redis-server` for tests (Debian's package; `.ci/run` installs it when missing): bound to
 * 127.0.0.1 on a free port, no persistence (`--save '' --appendonly no`), working directory in a temp dir.
 * `stop()` and `restart()` (same port, empty data — like a Redis pod replaced) let tests take Redis away
 * in the middle of a run.
 *
 *   if (!REDIS_SERVER) return t.skip(REDIS_MISSING);   // loud skip when the binary is missing
 *   const redis = await startRedisServer();
 *   ... REDIS_URL = redis.url ...
 *   await redis.stop(); await redis.restart(); await redis.close();
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { freePort } from './relay-process';

function findRedisServer(): string | undefined {
  const found = spawnSync('sh', ['-c', 'command -v redis-server'], { encoding: 'utf8' });
  const bin = found.status === 0 ? found.stdout.trim() : '';
  if (bin) return bin;
  for (const p of ['/usr/bin/redis-server', '/usr/local/bin/redis-server', '/usr/sbin/redis-server']) {
    if (fs.existsSync(p)) return p;
  }
  return undefined;
}

/** Path of the redis-server binary, or undefined when it is not installed. */
export const REDIS_SERVER = findRedisServer();

/** The skip reason tests print when redis-server is missing. */
export const REDIS_MISSING =
  'redis-server is NOT installed: Redis tests SKIPPED (apt-get install redis-server; .ci/run installs it)';

if (!REDIS_SERVER) {
  // Loud on purpose: a skipped Redis suite must not look like a green one.
  process.stderr.write(`\n*** ${REDIS_MISSING} ***\n\n`);
}

export interface RedisServer {
  host: string;
  port: number;
  /** redis://127.0.0.1:<port> */
  url: string;
  /** True while the server process runs. */
  readonly running: boolean;
  /** Stop the server (SIGTERM, SIGKILL after 3 s); resolves when it has exited. */
  stop(): Promise<void>;
  /** Start it again on the same port (empty data: nothing is persisted). */
  restart(): Promise<void>;
  /** Freeze the process (SIGSTOP): connections stay open but nothing answers, like a network partition. */
  pause(): void;
  /** Thaw it (SIGCONT). */
  resume(): void;
  /** Stop and remove the temp dir. */
  close(): Promise<void>;
}

function launch(bin: string, port: number, dir: string, timeoutMs: number): Promise<ChildProcess> {
  const child = spawn(
    bin,
    [
      '--port',
      String(port),
      '--bind',
      '127.0.0.1',
      '--save',
      '',
      '--appendonly',
      'no',
      '--dir',
      dir,
      '--protected-mode',
      'no',
      '--loglevel',
      'warning',
      '--daemonize',
      'no',
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let output = '';
  return new Promise<ChildProcess>((resolve, reject) => {
    const fail = (err: Error) => {
      clearTimeout(timer);
      clearInterval(poll);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      reject(err);
    };
    const timer = setTimeout(
      () => fail(new Error(`redis-server did not accept connections on ${port}: ${output.slice(-500)}`)),
      timeoutMs,
    );
    child.stdout!.on('data', (c: Buffer) => (output += c.toString()));
    child.stderr!.on('data', (c: Buffer) => (output += c.toString()));
    child.once('error', fail);
    child.once('exit', (code) => fail(new Error(`redis-server exited (${code}): ${output.slice(-500)}`)));
    // Ready when a PING answers +PONG (log lines vary between versions).
    let probing = false;
    const poll = setInterval(() => {
      if (probing) return;
      probing = true;
      const sock = net.connect(port, '127.0.0.1');
      sock.setTimeout(200);
      let reply = '';
      const done = () => {
        probing = false;
        sock.destroy();
      };
      sock.on('connect', () => sock.write('PING\r\n'));
      sock.on('data', (d) => {
        reply += d.toString();
        if (reply.includes('+PONG')) {
          done();
          clearTimeout(timer);
          clearInterval(poll);
          child.removeAllListeners('exit');
          child.removeListener('error', fail);
          resolve(child);
        }
      });
      sock.on('error', done);
      sock.on('timeout', done);
    }, 20);
  });
}

export async function startRedisServer(options: { timeoutMs?: number } = {}): Promise<RedisServer> {
  if (!REDIS_SERVER) throw new Error(REDIS_MISSING);
  const bin = REDIS_SERVER;
  const timeoutMs = options.timeoutMs ?? 5_000;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ses-relay-redis-'));
  let port = await freePort();
  let child: ChildProcess | undefined;
  // A freed port can be taken between freePort() and the bind: retry a few times.
  for (let attempt = 0; ; attempt++) {
    try {
      child = await launch(bin, port, dir, timeoutMs);
      break;
    } catch (err) {
      if (attempt >= 3) throw err;
      port = await freePort();
    }
  }

  const stop = async () => {
    const c = child;
    child = undefined;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => c.once('exit', () => resolve()));
    c.kill('SIGTERM');
    const killer = setTimeout(() => c.kill('SIGKILL'), 3_000);
    await exited;
    clearTimeout(killer);
  };

  return {
    host: '127.0.0.1',
    port,
    url: `redis://127.0.0.1:${port}`,
    get running() {
      return child !== undefined && child.exitCode === null && child.signalCode === null;
    },
    stop,
    async restart() {
      await stop();
      // The port was ours a moment ago; retry briefly while the kernel releases it.
      for (let attempt = 0; ; attempt++) {
        try {
          child = await launch(bin, port, dir, timeoutMs);
          return;
        } catch (err) {
          if (attempt >= 10) throw err;
          await new Promise((r) => setTimeout(r, 100));
        }
      }
    },
    pause() {
      child?.kill('SIGSTOP');
    },
    resume() {
      child?.kill('SIGCONT');
    },
    async close() {
      child?.kill('SIGCONT');
      await stop();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
