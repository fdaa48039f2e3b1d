/**
 * Ingress limits: SIZE= parameter, oversize DATA (552 without buffering, nothing stored, a ~50 MB
 * stream with a 1 MB limit), recipients per message (452 4.5.3), SMTP_MAX_CLIENTS (421 4.7.0).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import v8 from 'node:v8';
import vm from 'node:vm';

import { type SmtpListener } from '../src/ingress/smtp-listener';
import { MemorySpool } from './helpers/memory-spool';
import { RawSmtpClient } from './helpers/smtp-client';
import { startTestListener } from './helpers/ingress-listener';

const LIMIT = 1024 * 1024;

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

/** Memory still reachable (heap + Buffers) after a full GC. */
function retainedBytes(): number {
  gc();
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
}

async function writeWithBackpressure(c: RawSmtpClient, chunk: Buffer, times: number): Promise<void> {
  for (let i = 0; i < times; i++) {
    if (!c.socket.write(chunk)) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, 10_000);
        c.socket.once('drain', () => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    if (c.closed) throw new Error('server closed the connection during DATA');
  }
}

describe('ingress message size', () => {
  let listener: SmtpListener;
  let spool: MemorySpool;
  let c: RawSmtpClient;
  before(async () => {
    spool = new MemorySpool();
    ({ listener } = await startTestListener({ maxMessageSize: LIMIT }, { spool }));
    c = await RawSmtpClient.connect(listener.address().port);
    await c.read();
    await c.command('EHLO client.test');
  });
  after(async () => {
    c.close();
    await listener.close(1000);
  });

  it('refuses MAIL FROM with SIZE= over the limit at once: 552 5.3.4', async () => {
    const r = await c.command(`MAIL FROM:<a@example.com> SIZE=${LIMIT + 1}`);
    assert.equal(r.text, '552 5.3.4 Message size exceeds fixed maximum message size');
    assert.equal((await c.command(`MAIL FROM:<a@example.com> SIZE=${LIMIT}`)).code, 250);
    await c.command('RSET');
  });

  it('streams a ~50 MB message with a 1 MB limit without buffering it, stores nothing, answers 552 5.3.4', async (t) => {
    assert.equal((await c.command('MAIL FROM:<a@example.com>')).code, 250);
    assert.equal((await c.command('RCPT TO:<b@example.net>')).code, 250);
    assert.equal((await c.command('DATA')).code, 354);
    const line = Buffer.from(`${'x'.repeat(998)}\r\n`);
    const chunk = Buffer.concat(Array.from({ length: 64 }, () => line)); // 64 000 bytes
    const retainedBefore = retainedBytes();
    await writeWithBackpressure(c, chunk, 800); // 51.2 MB
    c.write('.\r\n');
    const r = await c.read(30_000);
    assert.equal(r.text, '552 5.3.4 Message size exceeds fixed maximum message size');
    const retainedGrowth = retainedBytes() - retainedBefore;
    t.diagnostic(
      `spool held at most ${spool.maxBuffered} bytes; retained memory grew by ${retainedGrowth} bytes`,
    );
    assert.equal(spool.messages.length, 0);
    assert.equal(spool.failedStores, 1);
    assert.ok(spool.maxBuffered <= LIMIT + 256 * 1024, `spool held ${spool.maxBuffered} bytes`);
    assert.ok(retainedGrowth < 8 * 1024 * 1024, `retained memory grew by ${retainedGrowth} bytes`);
    // the session goes on
    assert.equal((await c.command('MAIL FROM:<a@example.com>')).code, 250);
    assert.equal((await c.command('RCPT TO:<b@example.net>')).code, 250);
    assert.equal((await c.command('DATA')).code, 354);
    assert.match((await c.command('small\r\n.')).text, /^250 2\.0\.0 Ok: queued as /);
    assert.equal(spool.messages.length, 1);
  });

  it('accepts a message of exactly the limit', async () => {
    const body = Buffer.alloc(LIMIT, 'y');
    body.write('\r\n', LIMIT - 2);
    assert.equal((await c.command('MAIL FROM:<a@example.com>')).code, 250);
    assert.equal((await c.command('RCPT TO:<b@example.net>')).code, 250);
    assert.equal((await c.command('DATA')).code, 354);
    c.write(body);
    c.write('.\r\n');
    assert.equal((await c.read(10_000)).code, 250);
    assert.equal(spool.messages.at(-1)?.body.length, LIMIT);
  });
});

describe('ingress message size is counted as stored (after bare LF becomes CRLF)', () => {
  const SMALL = 1000;
  let listener: SmtpListener;
  let spool: MemorySpool;
  before(async () => {
    spool = new MemorySpool();
    ({ listener } = await startTestListener({ maxMessageSize: SMALL }, { spool }));
  });
  after(() => listener.close(1000));

  async function send(body: string): Promise<string> {
    const c = await RawSmtpClient.connect(listener.address().port);
    try {
      await c.read();
      await c.command('EHLO client.test');
      assert.equal((await c.command('MAIL FROM:<a@example.com>')).code, 250);
      assert.equal((await c.command('RCPT TO:<b@example.net>')).code, 250);
      assert.equal((await c.command('DATA')).code, 354);
      c.write(`${body}\r\n.\r\n`);
      return (await c.read(10_000)).text;
    } finally {
      c.close();
    }
  }

  it('refuses a 994-byte bare-LF message over a 1000-byte limit (it would be stored as 1493): 552, nothing stored', async () => {
    const before = spool.messages.length;
    const body = 'a\n'.repeat(497); // 994 bytes sent, 497 × 3 + 2 = 1493 bytes once normalised
    assert.equal(await send(body), '552 5.3.4 Message size exceeds fixed maximum message size');
    assert.equal(spool.messages.length, before);
  });

  it('accepts a bare-LF message that is exactly the limit once normalised, refuses one byte more', async () => {
    const exact = `${'a\n'.repeat(332)}bb`; // 996 + "bb\r\n" = 1000 bytes stored
    assert.match(await send(exact), /^250 2\.0\.0 Ok: queued as /);
    assert.equal(spool.messages.at(-1)?.body.length, SMALL);
    const count = spool.messages.length;
    assert.equal(await send(`${exact}b`), '552 5.3.4 Message size exceeds fixed maximum message size');
    assert.equal(spool.messages.length, count);
  });
});

describe('ingress recipients per message', () => {
  it('answers 452 4.5.3 for recipients beyond SMTP_MAX_RECIPIENTS; repeats do not count', async () => {
    const { listener, spool } = await startTestListener({ maxRecipients: 3 });
    const c = await RawSmtpClient.connect(listener.address().port);
    try {
      await c.read();
      await c.command('EHLO client.test');
      assert.equal((await c.command('MAIL FROM:<a@example.com>')).code, 250);
      for (const r of ['r1', 'r2', 'r3'])
        assert.equal((await c.command(`RCPT TO:<${r}@example.net>`)).code, 250);
      assert.equal((await c.command('RCPT TO:<r4@example.net>')).text, '452 4.5.3 Too many recipients');
      assert.equal((await c.command('RCPT TO:<R2@example.net>')).code, 250);
      assert.equal((await c.command('DATA')).code, 354);
      assert.equal((await c.command('x\r\n.')).code, 250);
      assert.equal(spool.messages[0].envelope.recipients.length, 3);
    } finally {
      c.close();
      await listener.close(1000);
    }
  });
});

describe('ingress SMTP_MAX_CLIENTS', () => {
  it('answers 421 4.7.0 to connections beyond the limit and closes them', async () => {
    const { listener } = await startTestListener({ maxClients: 2 });
    const port = listener.address().port;
    const a = await RawSmtpClient.connect(port);
    const b = await RawSmtpClient.connect(port);
    try {
      assert.equal((await a.read()).code, 220);
      assert.equal((await b.read()).code, 220);
      const c = await RawSmtpClient.connect(port);
      assert.equal((await c.read()).text, '421 4.7.0 Too many connections, try again later');
      assert.ok(await c.waitClosed(3000));
      a.close();
      await a.waitClosed();
      // a slot is free again
      const deadline = Date.now() + 3000;
      while (listener.activeSessions() > 1 && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 20));
      const d = await RawSmtpClient.connect(port);
      assert.equal((await d.read()).code, 220);
      d.close();
    } finally {
      a.close();
      b.close();
      await listener.close(1000);
    }
  });
});

describe('ingress SMTP_SOCKET_TIMEOUT', () => {
  it('closes an idle session with 421 after the socket timeout', async () => {
    const { listener } = await startTestListener({ socketTimeoutMs: 300 });
    const c = await RawSmtpClient.connect(listener.address().port);
    try {
      await c.read();
      await c.command('EHLO client.test');
      const r = await c.read(5000);
      assert.equal(r.code, 421);
      assert.match(r.text, /^421 4\.4\.2 /);
      assert.ok(await c.waitClosed(3000));
    } finally {
      c.close();
      await listener.close(1000);
    }
  });
});
