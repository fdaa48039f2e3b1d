/**
 * Each touch of smtp-server's private API (src/ingress/smtp-server-internals.ts) with its test: the start-up
 * check (passes on the pinned version, names what changed otherwise), the greeting delay (per server; 0
 * greets at once, 100 ms waits and still refuses early talkers), the reply rewriting on each connection
 * (one enhanced code, smtp-server's own replies counted, SIZE= and hidden AUTH as catalogue replies), the
 * per-session disabledCommands, and the raw socket of a STARTTLS session forgotten when it ends.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { describe, it } from 'node:test';
import bcrypt from 'bcryptjs';
import { SMTPServer } from 'smtp-server';
import { SMTPConnection } from 'smtp-server/lib/smtp-connection';
import { ingressMetrics } from '../src/ingress/ingress-metrics';
import {
  SMTP_SERVER_VERSION,
  SmtpServerInternalsError,
  findInternalsProblems,
  verifySmtpServerInternals,
} from '../src/ingress/smtp-server-internals';
import { startTestListener } from './helpers/ingress-listener';
import { RawSmtpClient, testTls } from './helpers/smtp-client';

const tlsFiles = testTls();
const users = [{ username: 'alice', bcryptHash: bcrypt.hashSync('s3cret', 4) }];
const plain = (u: string, p: string): string => Buffer.from(`\0${u}\0${p}`).toString('base64');

async function rejections(reply: string): Promise<number> {
  const m = await ingressMetrics.rejections.get();
  return m.values.find((v) => v.labels.reply === reply)?.value ?? 0;
}

/** Milliseconds from connect to the 220 greeting. */
async function greetingAfter(port: number): Promise<number> {
  const t0 = Date.now();
  const c = await RawSmtpClient.connect(port);
  try {
    const r = await c.read(5000);
    assert.equal(r.code, 220, r.text);
    return Date.now() - t0;
  } finally {
    c.close();
  }
}

describe('smtp-server internals: the start-up check', () => {
  it(`passes on the installed smtp-server (${SMTP_SERVER_VERSION}, pinned in package.json)`, () => {
    assert.deepEqual(findInternalsProblems(), []);
    verifySmtpServerInternals();
    const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'package.json'), 'utf8')) as {
      dependencies: Record<string, string>;
    };
    assert.equal(pkg.dependencies['smtp-server'], SMTP_SERVER_VERSION, 'pinned exactly');
  });

  it('names what changed, in one line, when an internal is missing or behaves differently', () => {
    const proto = SMTPConnection.prototype as unknown as Record<string, unknown>;
    const saved = { connectionReady: proto.connectionReady, _isSupported: proto._isSupported };
    try {
      delete proto.connectionReady;
      proto._isSupported = () => true; // ignores session.disabledCommands
      const problems = findInternalsProblems();
      assert.ok(problems.includes('SMTPConnection#connectionReady is missing'), problems.join('; '));
      assert.ok(problems.includes('session.disabledCommands does not switch AUTH'), problems.join('; '));
      const err = new SmtpServerInternalsError(problems);
      assert.ok(!err.message.includes('\n'), 'one line');
      assert.match(
        err.message,
        /^smtp-server internals changed \(.+\): src\/ingress\/smtp-server-internals\.ts/,
      );
    } finally {
      Object.assign(proto, saved);
    }
    assert.deepEqual(findInternalsProblems(), []);
  });
});

describe('smtp-server internals: the greeting delay (SMTP_GREETING_DELAY)', () => {
  it('0 greets at once, 100ms waits, and a server that sets none keeps smtp-server’s 100 ms', async () => {
    const now = await startTestListener({ greetingDelayMs: 0 });
    const later = await startTestListener({ greetingDelayMs: 100 });
    const other = new SMTPServer({ logger: false, disabledCommands: ['STARTTLS'] });
    await new Promise<void>((resolve) => other.listen(0, '127.0.0.1', resolve));
    try {
      // Both listeners live in one process: the delay belongs to each server, not to the process.
      const [atOnce, waited, untouched] = await Promise.all([
        greetingAfter(now.port),
        greetingAfter(later.port),
        greetingAfter((other.server.address() as AddressInfo).port),
      ]);
      assert.ok(waited >= 95, `SMTP_GREETING_DELAY=100ms: greeting after ${waited} ms`);
      assert.ok(untouched >= 95, `another smtp-server keeps its 100 ms: ${untouched} ms`);
      // Measured side by side, so a busy machine delays all three alike: 0 greets before the two held ones.
      assert.ok(
        atOnce < waited && atOnce < untouched,
        `SMTP_GREETING_DELAY=0: greeting after ${atOnce} ms, before the held ones (${waited}, ${untouched} ms)`,
      );
    } finally {
      await Promise.all([now.listener.close(500), later.listener.close(500)]);
      await new Promise<void>((resolve) => other.close(resolve));
    }
  });

  it('with a delay, a client that talks before the greeting is refused (early-talker check kept)', async () => {
    const { listener, spool, port } = await startTestListener({ greetingDelayMs: 300 });
    try {
      const c = await RawSmtpClient.connect(port);
      c.write('EHLO early.test\r\nMAIL FROM:<a@example.com>\r\n');
      const r = await c.read(5000);
      assert.match(r.text, /^421 .*You talk too soon/);
      assert.ok(await c.waitClosed(3000));
      assert.equal(spool.messages.length, 0);
    } finally {
      await listener.close(500);
    }
  });
});

describe('smtp-server internals: replies of each connection', () => {
  it('ours carry one enhanced code; smtp-server’s keep theirs and are counted as smtp_<code>', async () => {
    const { listener, port } = await startTestListener({ users, trustedNetworks: [], maxMessageSize: 1000 });
    const c = await RawSmtpClient.connect(port);
    try {
      await c.read();
      await c.command('EHLO client.test');
      assert.equal((await c.command('MAIL FROM:<a@example.com>')).text, '530 5.7.0 Authentication required');
      const before = await rejections('smtp_503');
      assert.equal((await c.command('RCPT TO:<b@example.net>')).text, '503 5.5.1 Error: need MAIL command');
      assert.equal(await rejections('smtp_503'), before + 1);
      // smtp-server's own SIZE= refusal becomes the catalogue reply
      const tooBig = await rejections('messageTooBig');
      assert.equal(
        (await c.command('MAIL FROM:<a@example.com> SIZE=1001')).text,
        '552 5.3.4 Message size exceeds fixed maximum message size',
      );
      assert.equal(await rejections('messageTooBig'), tooBig + 1);
    } finally {
      c.close();
      await listener.close(500);
    }
  });

  it('AUTH hidden by the session’s disabledCommands answers 538 over plaintext, 421 when locked out', async () => {
    const { listener, port } = await startTestListener(
      { users, trustedNetworks: [], tls: tlsFiles, authMaxFailures: 1 },
      { authFailureDelayMs: 1 },
    );
    try {
      const c = await RawSmtpClient.connect(port);
      await c.read();
      assert.ok(!(await c.command('EHLO client.test')).text.includes('AUTH'), 'no AUTH over plaintext');
      assert.equal(
        (await c.command('AUTH LOGIN')).text,
        '538 5.7.11 Encryption required for requested authentication mechanism',
      );
      assert.equal((await c.command('STARTTLS')).code, 220);
      await c.startTls({ ca: tlsFiles.ca, servername: 'localhost' });
      assert.match((await c.command('EHLO client.test')).text, /AUTH PLAIN LOGIN/, 'AUTH after STARTTLS');
      assert.equal((await c.command(`AUTH PLAIN ${plain('alice', 'wrong')}`)).code, 421, 'locked out');
      c.close();

      // A new session of the locked-out address: AUTH is not offered, and refused before any credentials.
      const d = await RawSmtpClient.connect(port);
      await d.read();
      assert.equal((await d.command('STARTTLS')).code, 220);
      await d.startTls({ ca: tlsFiles.ca, servername: 'localhost' });
      assert.ok(!(await d.command('EHLO client.test')).text.includes('AUTH'), 'no AUTH while locked out');
      assert.equal(
        (await d.command('AUTH LOGIN')).text,
        '421 4.7.0 Too many failed authentication attempts, try again later',
      );
      assert.ok(await d.waitClosed(3000));
    } finally {
      await listener.close(500);
    }
  });
});

describe('smtp-server internals: raw sockets', () => {
  it('forgets the raw socket of a STARTTLS session when it ends (upgrade() strips its close listener)', async () => {
    const { listener, port } = await startTestListener({ tls: tlsFiles });
    try {
      const c = await RawSmtpClient.connect(port);
      await c.read();
      await c.command('EHLO client.test');
      assert.equal((await c.command('STARTTLS')).code, 220);
      await c.startTls({ ca: tlsFiles.ca, servername: 'localhost' });
      await c.command('EHLO client.test');
      assert.equal(listener.openSockets(), 1);
      assert.equal((await c.command('QUIT')).code, 221);
      await c.waitClosed(3000);
      const deadline = Date.now() + 3000;
      while ((listener.openSockets() > 0 || listener.activeSessions() > 0) && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 10));
      }
      assert.equal(listener.activeSessions(), 0);
      assert.equal(listener.openSockets(), 0);
    } finally {
      await listener.close(500);
    }
  });
});
