/**
 * Child process for test/ingress-memory.test.ts, started with `--expose-gc`: two real SMTP listeners (STARTTLS
 * with static users, and implicit TLS) on an in-memory spool. On `measure` it forces full GCs and answers
 * with what is still alive, counted by constructor name in a V8 heap snapshot (SMTPConnection, TLSSocket,
 * Socket), the heap size and the listeners' own socket and session counts.
 *
 * Protocol over IPC: the child sends `{ ready, starttlsPort, implicitPort }`; the parent sends
 * `{ cmd: 'measure' }` (answer: a Measurement), `{ cmd: 'start-doomed' }` (a third listener; answer: `{ port }`),
 * `{ cmd: 'close-doomed' }` (its graceful shutdown; answer: `{ closed }`) or `{ cmd: 'stop' }`.
 */
import v8 from 'node:v8';
import bcrypt from 'bcryptjs';
import type { SmtpListener } from '../../src/ingress/smtp-listener';
import { startTestListener } from './ingress-listener';
import { MemorySpool } from './memory-spool';
import { testTls } from './smtp-client';

export interface Measurement {
  heapUsed: number;
  objects: Record<string, number>;
  /** Raw sockets the listeners still track (-1 if the listener cannot tell). */
  openSockets: number;
  sessions: number;
}

export const COUNTED = ['SMTPConnection', 'SMTPStream', 'TLSSocket', 'Socket'] as const;
export const CHILD_USER = { user: 'app', pass: 'pw-for-memory-test' };
/** The client address that may send without AUTH (the rest of 127/8 must AUTH). */
export const TRUSTED_CLIENT = '127.0.0.2';
export const IDLE_TIMEOUT_MS = 400;

const gc = (globalThis as { gc?: () => void }).gc;

interface HeapSnapshotJson {
  snapshot: { meta: { node_fields: string[]; node_types: [string[]] } };
  nodes: number[];
  strings: string[];
}

/** Live objects per constructor name, from a heap snapshot (which only holds reachable objects). */
async function countObjects(names: readonly string[]): Promise<Record<string, number>> {
  const chunks: string[] = [];
  for await (const chunk of v8.getHeapSnapshot()) chunks.push(String(chunk));
  const snap = JSON.parse(chunks.join('')) as HeapSnapshotJson;
  const fields = snap.snapshot.meta.node_fields;
  const typeIdx = fields.indexOf('type');
  const nameIdx = fields.indexOf('name');
  const objectType = snap.snapshot.meta.node_types[0].indexOf('object');
  const wanted = new Map(names.map((n) => [snap.strings.indexOf(n), n] as const));
  const counts: Record<string, number> = Object.fromEntries(names.map((n) => [n, 0]));
  for (let i = 0; i < snap.nodes.length; i += fields.length) {
    if (snap.nodes[i + typeIdx] !== objectType) continue;
    const name = wanted.get(snap.nodes[i + nameIdx]);
    if (name) counts[name] += 1;
  }
  return counts;
}

async function settle(): Promise<void> {
  for (let i = 0; i < 4; i++) {
    await new Promise((r) => setImmediate(r));
    gc!();
  }
}

function openSockets(listener: SmtpListener): number {
  const l = listener as SmtpListener & { openSockets?: () => number };
  return typeof l.openSockets === 'function' ? l.openSockets() : -1;
}

async function main(): Promise<void> {
  if (!gc) throw new Error('ingress-memory-child needs node --expose-gc');
  const tlsFiles = testTls();
  const users = [{ username: CHILD_USER.user, bcryptHash: bcrypt.hashSync(CHILD_USER.pass, 4) }];
  const spool = new MemorySpool();
  const common = {
    users,
    trustedNetworks: [`${TRUSTED_CLIENT}/32`],
    tls: tlsFiles,
    // Every AUTH failure of the test comes from one address; the lockout is not what is measured here.
    authMaxFailures: 1_000_000,
    socketTimeoutMs: IDLE_TIMEOUT_MS,
  };
  const starttls = await startTestListener(common, { spool, authFailureDelayMs: 1 });
  const implicit = await startTestListener(
    { ...common, implicitTls: true },
    { spool, authFailureDelayMs: 1 },
  );
  const listeners = [starttls.listener, implicit.listener];

  /** A third listener that the parent fills with sessions and then shuts down (the shutdown kind). */
  let doomed: SmtpListener | undefined;
  process.on('message', (msg: { cmd: string }) => {
    if (msg.cmd === 'start-doomed') {
      void startTestListener(common, { spool, authFailureDelayMs: 1 }).then((l) => {
        doomed = l.listener;
        process.send!({ port: l.port });
      });
    } else if (msg.cmd === 'close-doomed') {
      void doomed!.close(200).then(() => {
        doomed = undefined;
        process.send!({ closed: true });
      });
    } else if (msg.cmd === 'measure') {
      void (async () => {
        // Wait (bounded) until both listeners consider every session over.
        const deadline = Date.now() + 5000;
        while (Date.now() < deadline && listeners.some((l) => l.activeSessions() > 0 || openSockets(l) > 0)) {
          await new Promise((r) => setTimeout(r, 20));
        }
        spool.messages.length = 0;
        await settle();
        const objects = await countObjects(COUNTED);
        await settle();
        const m: Measurement = {
          heapUsed: process.memoryUsage().heapUsed,
          objects,
          openSockets: listeners.reduce((n, l) => n + openSockets(l), 0),
          sessions: listeners.reduce((n, l) => n + l.activeSessions(), 0),
        };
        process.send!(m);
      })();
    } else if (msg.cmd === 'stop') {
      void Promise.all(listeners.map((l) => l.close(500))).then(() => process.exit(0));
    }
  });
  process.send!({ ready: true, starttlsPort: starttls.port, implicitPort: implicit.port });
}

// The test imports the constants above; only the forked process runs the listeners.
if (require.main === module) void main();
