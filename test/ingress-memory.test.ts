/**
 * Ingress memory: a session that is over leaves nothing behind. The listener runs in a child process started
 * with --expose-gc (test/helpers/ingress-memory-child.ts); for every kind of connection the test makes N real
 * sessions, then the child forces GC and counts the live SMTPConnection, SMTPStream, TLSSocket and Socket
 * objects in a V8 heap snapshot, and the raw sockets its listeners still track. Every kind must come back to
 * the baseline (issue 8, defect 1: every STARTTLS connection used to stay on the heap through the listener's
 * raw-socket set). The figures are printed.
 */
import assert from 'node:assert/strict';
import { fork, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { after, before, describe, it } from 'node:test';
import nodemailer from 'nodemailer';
import {
  CHILD_USER,
  COUNTED,
  IDLE_TIMEOUT_MS,
  TRUSTED_CLIENT,
  type Measurement,
} from './helpers/ingress-memory-child';
import { RawSmtpClient, testTls } from './helpers/smtp-client';

const N = 60;
const CONCURRENCY = 10;
const tlsFiles = testTls();
const tlsOptions = { ca: tlsFiles.ca, servername: 'localhost' };
const plainAuth = Buffer.from(`\0${CHILD_USER.user}\0${CHILD_USER.pass}`).toString('base64');
const wrongAuth = Buffer.from(`\0${CHILD_USER.user}\0wrong`).toString('base64');
const message = 'From: a@example.com\r\nSubject: memory\r\n\r\nhello\r\n';

interface Ports {
  starttlsPort: number;
  implicitPort: number;
}

async function expectCode(c: RawSmtpClient, line: string, code: number): Promise<void> {
  const r = await c.command(line);
  assert.equal(r.code, code, `${line}: ${r.text}`);
}

async function greeted(port: number, localAddress?: string): Promise<RawSmtpClient> {
  const c = await RawSmtpClient.connect(port, { localAddress });
  assert.equal((await c.read()).code, 220);
  return c;
}

/** Connected over STARTTLS (EHLO done again inside TLS), optionally authenticated. */
async function secured(port: number, auth: boolean): Promise<RawSmtpClient> {
  const c = await greeted(port);
  await expectCode(c, 'EHLO client.test', 250);
  await expectCode(c, 'STARTTLS', 220);
  await c.startTls(tlsOptions);
  await expectCode(c, 'EHLO client.test', 250);
  if (auth) await expectCode(c, `AUTH PLAIN ${plainAuth}`, 235);
  return c;
}

async function quit(c: RawSmtpClient): Promise<void> {
  await expectCode(c, 'QUIT', 221);
  await c.waitClosed(5000);
  c.close();
}

async function nodemailerSend(options: Record<string, unknown>): Promise<void> {
  const transport = nodemailer.createTransport({
    host: '127.0.0.1',
    tls: tlsOptions,
    auth: CHILD_USER,
    ...options,
  });
  try {
    const info = await transport.sendMail({
      envelope: { from: 'a@example.com', to: 'b@example.net' },
      raw: message,
    });
    assert.match(info.response, /^250 /);
  } finally {
    transport.close();
  }
}

/** A raw TCP socket that connects, optionally writes, then is destroyed (or left until the server closes). */
function rawTcp(port: number, write?: Buffer, waitForServer = false): Promise<void> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host: '127.0.0.1' }, () => {
      if (write) s.write(write);
      if (!waitForServer) setTimeout(() => s.destroy(), 5);
    });
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error('server did not close the abandoned connection'));
    }, 10 * IDLE_TIMEOUT_MS);
    s.on('error', () => {});
    s.resume();
    s.on('close', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

type Kind = { name: string; run: (ports: Ports, i: number) => Promise<void>; shutdown?: boolean };

const KINDS: Kind[] = [
  {
    name: 'plain (trusted, no AUTH)',
    async run({ starttlsPort }) {
      const c = await greeted(starttlsPort, TRUSTED_CLIENT);
      await expectCode(c, 'EHLO client.test', 250);
      await expectCode(c, 'MAIL FROM:<a@example.com>', 250);
      await expectCode(c, 'RCPT TO:<b@example.net>', 250);
      await expectCode(c, 'DATA', 354);
      await expectCode(c, `${message}.`, 250);
      await quit(c);
    },
  },
  {
    name: 'STARTTLS + AUTH (nodemailer)',
    run: ({ starttlsPort }) => nodemailerSend({ port: starttlsPort, requireTLS: true }),
  },
  {
    name: 'implicit TLS + AUTH (nodemailer)',
    run: ({ implicitPort }) => nodemailerSend({ port: implicitPort, secure: true }),
  },
  {
    name: 'AUTH failed (STARTTLS)',
    async run({ starttlsPort }) {
      const c = await secured(starttlsPort, false);
      await expectCode(c, `AUTH PLAIN ${wrongAuth}`, 535);
      await quit(c);
    },
  },
  {
    name: 'dropped mid-DATA (STARTTLS + AUTH)',
    async run({ starttlsPort }) {
      const c = await secured(starttlsPort, true);
      await expectCode(c, 'MAIL FROM:<a@example.com>', 250);
      await expectCode(c, 'RCPT TO:<b@example.net>', 250);
      await expectCode(c, 'DATA', 354);
      c.write(`${message}${'x'.repeat(2000)}\r\n`);
      await new Promise((r) => setTimeout(r, 5));
      c.close();
    },
  },
  {
    name: 'idle socket timeout (STARTTLS, then silence)',
    async run({ starttlsPort }) {
      const c = await secured(starttlsPort, false);
      assert.equal((await c.read(10 * IDLE_TIMEOUT_MS)).code, 421);
      assert.ok(await c.waitClosed(5000), 'server closed the idle connection');
      c.close();
    },
  },
  {
    name: 'STARTTLS handshake abandoned',
    async run({ starttlsPort }, i) {
      const c = await greeted(starttlsPort);
      await expectCode(c, 'EHLO client.test', 250);
      await expectCode(c, 'STARTTLS', 220);
      if (i % 3 === 0) {
        c.close(); // gone before the ClientHello
      } else if (i % 3 === 1) {
        c.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01])); // a ClientHello cut short
        await new Promise((r) => setTimeout(r, 5));
        c.close();
      } else {
        // A handshake that starts and is torn down midway by the client.
        const s = tls.connect({ socket: c.socket as net.Socket, ...tlsOptions });
        s.on('error', () => {});
        await new Promise((r) => setTimeout(r, 2));
        s.destroy();
        c.close();
      }
    },
  },
  {
    name: 'open at shutdown (idle, STARTTLS, mid-DATA), listener closed',
    shutdown: true,
    run: () => Promise.resolve(), // see the shutdown branch of the test
  },
  {
    name: 'implicit TLS handshake abandoned',
    async run({ implicitPort }, i) {
      if (i % 3 === 0) await rawTcp(implicitPort);
      else if (i % 3 === 1) await rawTcp(implicitPort, Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00]));
      else await rawTcp(implicitPort, undefined, true); // silent until the handshake timeout
    },
  },
];

/** A session left open for the shutdown kind: idle after EHLO, inside STARTTLS, or in the middle of DATA. */
async function openSession(port: number, i: number): Promise<RawSmtpClient> {
  if (i % 3 === 0) {
    const c = await greeted(port);
    await expectCode(c, 'EHLO client.test', 250);
    return c;
  }
  const c = await secured(port, i % 3 === 2);
  if (i % 3 === 2) {
    await expectCode(c, 'MAIL FROM:<a@example.com>', 250);
    await expectCode(c, 'RCPT TO:<b@example.net>', 250);
    await expectCode(c, 'DATA', 354);
    c.write(`${message}still writing...\r\n`);
  }
  return c;
}

async function runBatches(kind: Kind, ports: Ports): Promise<void> {
  for (let start = 0; start < N; start += CONCURRENCY) {
    const batch = [];
    for (let i = start; i < Math.min(N, start + CONCURRENCY); i++) batch.push(kind.run(ports, i));
    await Promise.all(batch);
  }
}

describe('ingress memory: nothing is retained after a session ends', () => {
  let child: ChildProcess;
  let ports: Ports;
  const replies: Array<(m: unknown) => void> = [];

  before(async () => {
    child = fork(path.join(__dirname, 'helpers', 'ingress-memory-child.ts'), [], {
      execArgv: ['--expose-gc', '--import', 'tsx'],
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    ports = await new Promise<Ports>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('memory child did not start')), 30_000);
      child.once('exit', (code) => reject(new Error(`memory child exited with ${code}`)));
      child.once('message', (m: Ports) => {
        clearTimeout(t);
        resolve(m);
      });
    });
    child.on('message', (m: unknown) => replies.shift()?.(m));
  });

  after(async () => {
    if (child.exitCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.send({ cmd: 'stop' });
    const t = setTimeout(() => child.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(t);
  });

  function request<T>(cmd: string): Promise<T> {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`no answer to ${cmd} within 60 s`)), 60_000);
      replies.push((m) => {
        clearTimeout(t);
        resolve(m as T);
      });
      child.send({ cmd });
    });
  }
  const measure = () => request<Measurement>('measure');

  /** N sessions open on a third listener when it shuts down; each must be closed by the server. */
  async function shutdownWithSessions(): Promise<void> {
    const { port } = await request<{ port: number }>('start-doomed');
    const clients: RawSmtpClient[] = [];
    for (let i = 0; i < N; i++) clients.push(await openSession(port, i));
    await request('close-doomed');
    for (const c of clients) {
      assert.ok(await c.waitClosed(5000), 'the server closed the session at shutdown');
      c.close();
    }
  }

  it(`${N} sessions of every kind leave no SMTPConnection, socket or tracked raw socket behind`, async () => {
    // One session of each kind first, so lazily built state (TLS contexts, module caches) is in the baseline.
    for (const kind of KINDS) await kind.run(ports, 2);
    await shutdownWithSessions();
    const baseline = await measure();
    const rows: string[] = [];
    const fmt = (m: Measurement): string =>
      `${COUNTED.map((n) => `${n}=${m.objects[n]}`).join(' ')} rawSockets=${m.openSockets} ` +
      `heap=${(m.heapUsed / 1048576).toFixed(1)}MB`;
    rows.push(`baseline: ${fmt(baseline)}`);
    const failures: string[] = [];
    for (const kind of KINDS) {
      const before = await measure();
      if (kind.shutdown) await shutdownWithSessions();
      else await runBatches(kind, ports);
      const afterKind = await measure();
      const heapDelta = ((afterKind.heapUsed - before.heapUsed) / 1024).toFixed(0);
      rows.push(`${kind.name} x${N}: ${fmt(afterKind)} (heap ${heapDelta} KB vs before)`);
      for (const name of COUNTED) {
        if (afterKind.objects[name] > baseline.objects[name]) {
          failures.push(
            `${kind.name}: ${afterKind.objects[name]} ${name} alive (baseline ${baseline.objects[name]})`,
          );
        }
      }
      if (afterKind.openSockets !== 0)
        failures.push(`${kind.name}: ${afterKind.openSockets} raw sockets tracked`);
      if (afterKind.sessions !== 0) failures.push(`${kind.name}: ${afterKind.sessions} sessions open`);
    }
    console.log(`ingress memory after a forced GC (${N} sessions per kind):\n  ${rows.join('\n  ')}`);
    assert.deepEqual(failures, []);
  });
});
