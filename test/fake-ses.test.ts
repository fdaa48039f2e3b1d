import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import nodemailer from 'nodemailer';
import { FAKE_REPLIES, FAKE_SES_CA, startFakeSes, type FakeSes } from './helpers/fake-ses';

function client(ses: FakeSes, extra: Record<string, unknown> = {}) {
  return nodemailer.createTransport({
    host: ses.host,
    port: ses.port,
    secure: false,
    requireTLS: true,
    auth: { user: ses.username, pass: ses.password },
    tls: { ca: FAKE_SES_CA },
    ...extra,
  });
}

const raw = (subject: string) =>
  `From: a@example.com\r\nTo: b@example.com\r\nSubject: ${subject}\r\n\r\nHello\r\n`;

describe('fake SES', () => {
  let ses: FakeSes;
  before(async () => {
    ses = await startFakeSes();
  });
  after(async () => {
    await ses.close();
  });

  it('accepts over STARTTLS with AUTH and records the transaction', async () => {
    const t = client(ses);
    const info = await t.sendMail({
      envelope: { from: 'a@example.com', to: ['b@example.com', 'c@example.com'] },
      raw: raw('one'),
    });
    t.close();
    assert.deepEqual(info.accepted, ['b@example.com', 'c@example.com']);
    await ses.waitFor(1);
    const m = ses.messages[0];
    assert.equal(m.mailFrom, 'a@example.com');
    assert.deepEqual(m.recipients, ['b@example.com', 'c@example.com']);
    assert.match(m.body.toString(), /Subject: one/);
    assert.equal(ses.recipientsReceived(), 2);
    assert.ok(ses.authCount >= 1);
  });

  it('refuses wrong credentials and plaintext AUTH', async () => {
    const bad = client(ses, { auth: { user: 'AKIAFAKE', pass: 'wrong' } });
    await assert.rejects(
      bad.sendMail({ envelope: { from: 'a@example.com', to: ['b@example.com'] }, raw: raw('x') }),
      (e: { responseCode?: number }) => e.responseCode === 535,
    );
    bad.close();
    const plain = client(ses, { requireTLS: false, ignoreTLS: true });
    await assert.rejects(
      plain.sendMail({ envelope: { from: 'a@example.com', to: ['b@example.com'] }, raw: raw('x') }),
    );
    plain.close();
  });

  it('plays queued answers: per-recipient 550, 454 at DATA, drop mid-DATA', async () => {
    ses.reset();
    const t = client(ses);
    ses.queueRcpt('bad@example.com', FAKE_REPLIES.mailboxUnavailable);
    const info = await t.sendMail({
      envelope: { from: 'a@example.com', to: ['ok@example.com', 'bad@example.com'] },
      raw: raw('mixed'),
    });
    assert.deepEqual(info.accepted, ['ok@example.com']);
    assert.deepEqual(info.rejected, ['bad@example.com']);

    ses.queueData(FAKE_REPLIES.throttling);
    await assert.rejects(
      t.sendMail({ envelope: { from: 'a@example.com', to: ['ok@example.com'] }, raw: raw('t') }),
      (e: { responseCode?: number; response?: string }) =>
        e.responseCode === 454 && /Throttling failure/.test(e.response ?? ''),
    );
    ses.queueData(FAKE_REPLIES.drop);
    await assert.rejects(
      t.sendMail({ envelope: { from: 'a@example.com', to: ['ok@example.com'] }, raw: raw('d') }),
    );
    ses.queueData({ delayMs: 100 });
    const started = Date.now();
    await t.sendMail({ envelope: { from: 'a@example.com', to: ['ok@example.com'] }, raw: raw('slow') });
    assert.ok(Date.now() - started >= 90);
    t.close();
    assert.equal(ses.messages.length, 2);
  });

  it('421 closes the connection', async () => {
    ses.reset();
    const t = client(ses);
    ses.queueData(FAKE_REPLIES.serviceUnavailable);
    await assert.rejects(
      t.sendMail({ envelope: { from: 'a@example.com', to: ['ok@example.com'] }, raw: raw('x') }),
      (e: { responseCode?: number }) => e.responseCode === 421,
    );
    t.close();
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(ses.connectionsOpen, 0);
  });

  it('script function sees the envelope', async () => {
    ses.reset();
    ses.script((ctx) =>
      ctx.phase === 'data' && ctx.recipients.length > 1 ? FAKE_REPLIES.messageRejected : undefined,
    );
    const t = client(ses);
    await assert.rejects(
      t.sendMail({
        envelope: { from: 'a@example.com', to: ['x@example.com', 'y@example.com'] },
        raw: raw('x'),
      }),
      (e: { responseCode?: number }) => e.responseCode === 554,
    );
    await t.sendMail({ envelope: { from: 'a@example.com', to: ['x@example.com'] }, raw: raw('x') });
    ses.script(undefined);
    t.close();
    assert.equal(ses.messages.length, 1);
  });

  it('pooled client reuses connections (connection counts)', async () => {
    ses.reset();
    const t = client(ses, { pool: true, maxConnections: 2 });
    await Promise.all(
      Array.from({ length: 10 }, (_, i) =>
        t.sendMail({ envelope: { from: 'a@example.com', to: [`r${i}@example.com`] }, raw: raw(`p${i}`) }),
      ),
    );
    t.close();
    assert.equal(ses.messages.length, 10);
    assert.ok(ses.connectionsOpened <= 2, `opened ${ses.connectionsOpened}`);
    assert.ok(new Set(ses.messages.map((m) => m.connectionId)).size <= 2);
  });
});

describe('fake SES rate limit', () => {
  let ses: FakeSes;
  before(async () => {
    ses = await startFakeSes({ rateLimit: { perSecond: 10, burst: 5 } });
  });
  after(async () => {
    await ses.close();
  });

  it('throttles like SES: a recipient-counted bucket, 454 when short', async () => {
    const t = client(ses);
    const to = ['a@x.test', 'b@x.test', 'c@x.test', 'd@x.test'];
    await t.sendMail({ envelope: { from: 'a@example.com', to }, raw: raw('1') });
    await assert.rejects(
      t.sendMail({ envelope: { from: 'a@example.com', to }, raw: raw('2') }),
      (e: { responseCode?: number }) => e.responseCode === 454,
    );
    assert.equal(ses.throttledCount, 1);
    await new Promise((r) => setTimeout(r, 400)); // refills 4 tokens at 10/s
    await t.sendMail({ envelope: { from: 'a@example.com', to }, raw: raw('3') });
    t.close();
    assert.equal(ses.recipientsReceived(), 8);
    assert.ok(ses.maxRecipientsInWindow(300) <= 4 + 3 + 1);
  });

  it('a refused transaction is refused whole, takes no tokens, and is recorded with its recipients', async () => {
    // A slow refill (1 token per 2 s) so the few ms between transactions do not matter.
    const slow = await startFakeSes({ rateLimit: { perSecond: 0.5, burst: 5 } });
    const t = client(slow);
    const send = (to: string[], s: string) =>
      t.sendMail({ envelope: { from: 'a@example.com', to }, raw: raw(s) });
    try {
      await send(['a@x.test', 'b@x.test', 'c@x.test'], 'fits'); // 3 of 5 tokens
      // 3 recipients, 2 tokens left: SES answers 454 after DATA and drops the message.
      await assert.rejects(
        send(['d@x.test', 'e@x.test', 'f@x.test'], 'over'),
        (e: { responseCode?: number; response?: string }) =>
          e.responseCode === 454 && /Maximum sending rate exceeded/.test(e.response ?? ''),
      );
      // The refusal took no tokens: the remaining 2 still admit a 2-recipient transaction.
      await send(['g@x.test', 'h@x.test'], 'rest');
      // More recipients than the bucket holds: can never pass.
      await assert.rejects(
        send(['1@x.test', '2@x.test', '3@x.test', '4@x.test', '5@x.test', '6@x.test'], 'big'),
      );
    } finally {
      t.close();
    }
    assert.equal(slow.recipientsReceived(), 5);
    assert.deepEqual(
      slow.refusals.map((r) => r.recipients),
      [3, 6],
    );
    assert.equal(slow.throttledRecipients(), 9);
    assert.equal(slow.throttledCount, 2);
    assert.ok(slow.refusals[0].at <= slow.refusals[1].at && slow.refusals[0].connectionId);
    slow.reset();
    assert.equal(slow.refusals.length, 0);
    assert.equal(slow.throttledRecipients(), 0);
    await slow.close();
  });

  it('maxRecipientsInWindow slides over acceptance times', () => {
    ses.reset();
    const push = (at: number, n: number) =>
      ses.messages.push({
        at,
        mailFrom: '',
        recipients: Array(n).fill('x'),
        body: Buffer.alloc(0),
        connectionId: 'c',
      });
    push(0, 3);
    push(500, 2);
    push(999, 4);
    push(1000, 1);
    assert.equal(ses.maxRecipientsInWindow(1000), 9);
    assert.equal(ses.maxRecipientsInWindow(500), 6);
    assert.equal(ses.maxRecipientsInWindow(1), 4);
    ses.reset();
  });
});
