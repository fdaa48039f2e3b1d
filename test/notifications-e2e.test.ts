/**
 * Delivery status notifications end to end: a relay process with BOUNCE_FROM in front of the fake SES over
 * real sockets; messages sent with exact DSN parameters (RFC 3461) over a raw SMTP connection; SES scripted
 * to refuse or defer recipients; every notification taken from what SES received and parsed with
 * mailparser part by part, the message/delivery-status part field by field (RFC 3464).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { SpoolInspector } from '../src/spool/spool-inspector';
import { FAKE_REPLIES, startFakeSes, type FakeSes, type ReceivedMessage } from './helpers/fake-ses';
import {
  blockFor,
  messageData,
  notificationsIn,
  parseNotification,
  sendRaw,
  type ParsedNotification,
} from './helpers/notifications';
import {
  fakeSesEnv,
  metricValue,
  ROOT,
  startRelayProcess,
  stopRelayProcess,
  type RelayProcess,
} from './helpers/relay-process';
import { RawSmtpClient } from './helpers/smtp-client';

const BOUNCE_FROM = 'mailer-daemon@relay.example';
const QUEUE_CLI = path.join(ROOT, 'dist', 'cli', 'queue.js');

/** Waits for the notification about `queueId` and parses it. */
async function notificationAbout(
  ses: FakeSes,
  queueId: string,
  type?: string,
): Promise<{ raw: ReceivedMessage; n: ParsedNotification }> {
  const match = (m: ReceivedMessage) =>
    m.mailFrom === BOUNCE_FROM &&
    m.body.includes(`X-Ses-Relay-Queue-ID: ${queueId}`) &&
    (type === undefined || m.body.includes(type));
  await ses.waitFor((ms) => ms.some(match), 20_000);
  const raw = ses.messages.find(match)!;
  return { raw, n: await parseNotification(raw.body) };
}

function notificationsAbout(ses: FakeSes, queueId: string): ReceivedMessage[] {
  return notificationsIn(ses.messages, BOUNCE_FROM).filter((m) =>
    m.body.includes(`X-Ses-Relay-Queue-ID: ${queueId}`),
  );
}

/** What the spool owes for a message (written in the same commit as its outcome). */
function owed(relay: RelayProcess, queueId: string): string[] | undefined {
  const inspector = SpoolInspector.open(relay.spoolDir);
  try {
    return inspector.show(queueId)?.notificationsOwed;
  } finally {
    inspector.close();
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('delivery status notifications (BOUNCE_FROM set)', () => {
  let ses: FakeSes;
  let relay: RelayProcess;

  before(async () => {
    ses = await startFakeSes();
    relay = await startRelayProcess({
      env: { ...fakeSesEnv(ses.port), BOUNCE_FROM, SES_RATE_LIMIT: '200', RETRY_SCHEDULE: '30s' },
    });
  });
  after(async () => {
    await stopRelayProcess(relay);
    await ses.close();
  });

  test('EHLO advertises DSN; ENVID and ORCPT beyond RFC 3461 limits get 501 5.5.4', async () => {
    const c = await RawSmtpClient.connect(relay.smtpPort);
    try {
      await c.read();
      assert.match((await c.command('EHLO client.test')).text, /^250-DSN$/m);
      const long = await c.command(`MAIL FROM:<app@example.com> ENVID=${'x'.repeat(101)}`);
      assert.equal(long.code, 501);
      assert.match(long.text, /5\.5\.4 Invalid DSN parameter \(ENVID longer than 100 characters\)/);
      // CR LF smuggled through xtext into a value copied into the notification: refused by smtp-server.
      assert.equal(
        (await c.command('MAIL FROM:<app@example.com> ENVID=a+0D+0ABcc:+20x@evil.example')).code,
        501,
      );
      assert.equal((await c.command('MAIL FROM:<app@example.com> ENVID=ok-1')).code, 250);
      const bad = await c.command('RCPT TO:<a@example.net> ORCPT=rfc822;caf+C3+A9@example.net');
      assert.equal(bad.code, 501);
      assert.match(bad.text, /5\.5\.4 Invalid DSN parameter \(ORCPT is not printable US-ASCII\)/);
      assert.equal((await c.command('RCPT TO:<a@example.net> NOTIFY=BOGUS')).code, 501);
    } finally {
      c.close();
    }
  });

  test('a 5xx: one notification for all failed recipients, checked part by part', async () => {
    ses.queueRcpt('gone@example.net', FAKE_REPLIES.mailboxUnavailable);
    ses.queueRcpt('blocked@example.net', { code: 554, message: '5.7.1 Message rejected: policy' });
    const id = await sendRaw(relay.smtpPort, {
      mailFrom: 'app@example.com',
      mailParams: 'RET=HDRS ENVID=order+2B42',
      rcpts: [
        { address: 'fine@example.net' },
        { address: 'gone@example.net', params: 'ORCPT=rfc822;Gone@Example.net' },
        { address: 'blocked@example.net', params: 'NOTIFY=FAILURE,DELAY' },
      ],
      data: messageData('order 42'),
    });
    const { raw, n } = await notificationAbout(ses, id);
    // The envelope: from BOUNCE_FROM (SES sends only from verified identities) to the original sender.
    assert.equal(raw.mailFrom, BOUNCE_FROM);
    assert.deepEqual(raw.recipients, ['app@example.com']);
    // Headers.
    assert.equal(n.mail.headers.get('auto-submitted'), 'auto-replied');
    assert.equal(n.mail.subject, 'Undelivered Mail Returned to Sender');
    assert.equal(n.mail.from?.value[0].address, BOUNCE_FROM);
    assert.equal(n.mail.to && !Array.isArray(n.mail.to) ? n.mail.to.value[0].address : '', 'app@example.com');
    assert.match(String(n.mail.messageId), /@relay\.example>$/);
    // Part 1: for a person, each failed recipient with SES's reply; not the delivered one.
    assert.match(n.text, /<gone@example\.net>: SES said: 550 5\.1\.1 Mailbox unavailable/);
    assert.match(n.text, /<blocked@example\.net>: SES said: 554 5\.7\.1 Message rejected: policy/);
    assert.ok(!n.text.includes('fine@example.net'));
    // Part 2: message/delivery-status, field by field.
    assert.equal(n.perMessage.get('reporting-mta'), 'dns; relay.test');
    assert.equal(n.perMessage.get('original-envelope-id'), 'order+42');
    assert.equal(n.perMessage.get('x-ses-relay-queue-id'), id);
    assert.ok(Number.isFinite(Date.parse(n.perMessage.get('arrival-date')!)), 'Arrival-Date is a date');
    assert.equal(n.perRecipient.length, 2);
    const gone = blockFor(n, 'gone@example.net');
    assert.equal(gone.get('original-recipient'), 'rfc822;Gone@Example.net');
    assert.equal(gone.get('action'), 'failed');
    assert.equal(gone.get('status'), '5.1.1');
    assert.equal(gone.get('diagnostic-code'), 'smtp; 550 5.1.1 Mailbox unavailable');
    assert.equal(gone.get('remote-mta'), 'dns; 127.0.0.1');
    assert.ok(Number.isFinite(Date.parse(gone.get('last-attempt-date')!)));
    const blocked = blockFor(n, 'blocked@example.net');
    assert.equal(blocked.get('original-recipient'), undefined);
    assert.equal(blocked.get('status'), '5.7.1');
    assert.equal(blocked.get('diagnostic-code'), 'smtp; 554 5.7.1 Message rejected: policy');
    // Part 3: RET=HDRS, the original header section exactly.
    assert.equal(n.returned.contentType, 'text/rfc822-headers');
    assert.equal(
      n.returned.content.toString('utf8'),
      'From: app@example.com\r\nTo: someone@example.net\r\nSubject: order 42\r\n',
    );
    assert.equal(notificationsAbout(ses, id).length, 1, 'one notification per message per event');
    const m = await relay.metrics();
    assert.equal(metricValue(m, 'ses_relay_notifications_total', { type: 'failure' }), 1);
    // Through the same rate limiter: the message's transaction and the notification's took tokens.
    assert.equal(metricValue(m, 'ses_relay_limiter_wait_seconds_count'), 2);
  });

  test('RET=FULL returns the whole message; without RET a small one too, a large one only its headers', async () => {
    const data = messageData('full please', 'line one\r\n.leading dot\r\nline three\r\n');
    const bodies: Record<string, string> = {};
    for (const [ret, rcpt, body] of [
      ['RET=FULL', 'full@example.net', data],
      ['', 'default@example.net', data],
      ['', 'large@example.net', messageData('large', `${'x'.repeat(998)}\r\n`.repeat(60))],
    ] as const) {
      ses.queueRcpt(rcpt, FAKE_REPLIES.mailboxUnavailable);
      bodies[rcpt] = await sendRaw(relay.smtpPort, {
        mailFrom: 'app@example.com',
        mailParams: ret,
        rcpts: [{ address: rcpt }],
        data: body,
      });
    }
    for (const rcpt of ['full@example.net', 'default@example.net']) {
      const { n } = await notificationAbout(ses, bodies[rcpt]);
      assert.equal(n.returned.contentType, 'message/rfc822', rcpt);
      assert.equal(n.returned.content.toString('utf8'), data, 'the stored bytes, unchanged');
      assert.match(n.text, /Your message is attached\./);
    }
    const { n } = await notificationAbout(ses, bodies['large@example.net']);
    assert.equal(
      n.returned.contentType,
      'text/rfc822-headers',
      'over 50 000 bytes without RET: headers only',
    );
    assert.match(n.returned.content.toString('utf8'), /^Subject: large\r$/m);
  });

  test('never for the null sender, never with NOTIFY=NEVER', async () => {
    ses.queueRcpt('null@example.net', FAKE_REPLIES.mailboxUnavailable);
    ses.queueRcpt('never@example.net', FAKE_REPLIES.mailboxUnavailable);
    const fromNull = await sendRaw(relay.smtpPort, {
      mailFrom: '',
      rcpts: [{ address: 'null@example.net' }],
      data: messageData('a bounce of a bounce'),
    });
    const never = await sendRaw(relay.smtpPort, {
      mailFrom: 'app@example.com',
      rcpts: [{ address: 'never@example.net', params: 'NOTIFY=NEVER' }],
      data: messageData('no news'),
    });
    for (const id of [fromNull, never]) {
      await relay.waitForLog((l) => l.event === 'message:failed' && l.queueId === id);
      // Owed notifications are written in the same commit as the failure: none is, so none will come.
      assert.deepEqual(owed(relay, id), []);
    }
    await sleep(500);
    assert.equal(notificationsAbout(ses, fromNull).length + notificationsAbout(ses, never).length, 0);
  });

  test('no loop: a notification that fails gets no notification of its own', async () => {
    ses.queueRcpt('loop-target@example.net', FAKE_REPLIES.mailboxUnavailable);
    // The original sender's address refuses mail: the notification to it fails at SES.
    ses.queueRcpt('loop@example.com', FAKE_REPLIES.mailboxUnavailable);
    const id = await sendRaw(relay.smtpPort, {
      mailFrom: 'loop@example.com',
      rcpts: [{ address: 'loop-target@example.net' }],
      data: messageData('loop'),
    });
    const queued = await relay.waitForLog((l) => l.event === 'notification:queued' && l.about === id);
    const notificationId = String(queued.queueId);
    await relay.waitForLog((l) => l.event === 'message:failed' && l.queueId === notificationId);
    const inspector = SpoolInspector.open(relay.spoolDir);
    try {
      const shown = inspector.show(notificationId)!;
      assert.equal(shown.reception.notification, 'failure');
      assert.equal(shown.reception.notificationFor, id);
      assert.equal(shown.envelope.mailFrom, BOUNCE_FROM);
      assert.deepEqual(shown.notificationsOwed, [], 'a notification never gets one');
    } finally {
      inspector.close();
    }
    await sleep(500);
    assert.ok(!relay.logs.some((l) => l.event === 'notification:queued' && l.about === notificationId));
  });

  test('NOTIFY=SUCCESS: a "relayed" report (SES is a next hop without DSN)', async () => {
    const id = await sendRaw(relay.smtpPort, {
      mailFrom: 'app@example.com',
      rcpts: [{ address: 'happy@example.net', params: 'NOTIFY=SUCCESS' }, { address: 'quiet@example.net' }],
      data: messageData('tell me'),
    });
    const { n } = await notificationAbout(ses, id);
    assert.equal(n.mail.subject, 'Successful Mail Delivery Report');
    assert.equal(n.perRecipient.length, 1);
    const block = blockFor(n, 'happy@example.net');
    assert.equal(block.get('action'), 'relayed');
    assert.equal(block.get('status'), '2.0.0');
    assert.match(block.get('diagnostic-code')!, /^smtp; 250 /);
    assert.equal(n.returned.contentType, 'text/rfc822-headers', 'success reports carry headers only');
    assert.equal(metricValue(await relay.metrics(), 'ses_relay_notifications_total', { type: 'relayed' }), 1);
  });

  test("an operator's bounce (queue bounce against the live relay): 5.0.0 with SES's last reply", async () => {
    ses.queueRcpt('later@example.net', FAKE_REPLIES.temporaryFailure);
    const id = await sendRaw(relay.smtpPort, {
      mailFrom: 'app@example.com',
      rcpts: [{ address: 'later@example.net' }],
      data: messageData('bounce me'),
    });
    await relay.waitForLog((l) => l.event === 'message:deferred' && l.queueId === id);
    const out = await promisify(execFile)(process.execPath, [QUEUE_CLI, 'bounce', id], {
      env: { ...process.env, SPOOL_DIR: relay.spoolDir, BOUNCE_FROM },
      timeout: 30_000,
    });
    assert.equal(out.stdout.trim(), id);
    const { n } = await notificationAbout(ses, id);
    const block = blockFor(n, 'later@example.net');
    assert.equal(block.get('action'), 'failed');
    assert.equal(block.get('status'), '5.0.0');
    assert.equal(block.get('diagnostic-code'), 'smtp; 451 4.4.2 Temporary service failure');
    assert.match(n.text, /returned to you by the relay's operator/);
    assert.equal(
      metricValue(await relay.metrics(), 'ses_relay_notifications_total', { type: 'operator-bounce' }),
      1,
    );
  });
});

describe('expiry and delay warnings', () => {
  test('DELAY_WARNING_TIME: one warning; MAX_QUEUE_AGE: one expiry notification with 4.4.7', async () => {
    const ses = await startFakeSes();
    ses.script((ctx) =>
      ctx.phase === 'rcpt' && ctx.address === 'slow@example.net'
        ? { code: 451, message: '4.2.2 Mailbox full, try later' }
        : undefined,
    );
    const relay = await startRelayProcess({
      env: {
        ...fakeSesEnv(ses.port),
        BOUNCE_FROM,
        RETRY_SCHEDULE: '500ms',
        DELAY_WARNING_TIME: '1500ms',
        MAX_QUEUE_AGE: '5s',
      },
    });
    try {
      const id = await sendRaw(relay.smtpPort, {
        mailFrom: 'app@example.com',
        mailParams: 'RET=FULL',
        rcpts: [{ address: 'slow@example.net' }],
        data: messageData('patience'),
      });
      const delay = await notificationAbout(ses, id, 'Action: delayed');
      assert.equal(delay.n.mail.subject, 'Delayed Mail (still being retried)');
      const block = blockFor(delay.n, 'slow@example.net');
      assert.equal(block.get('status'), '4.2.2');
      assert.equal(block.get('diagnostic-code'), 'smtp; 451 4.2.2 Mailbox full, try later');
      const until = Date.parse(block.get('will-retry-until')!);
      const arrival = Date.parse(delay.n.perMessage.get('arrival-date')!);
      assert.ok(Math.abs(until - arrival - 5000) <= 1000, 'Will-Retry-Until = arrival + MAX_QUEUE_AGE');
      assert.equal(delay.n.returned.contentType, 'text/rfc822-headers', 'a warning returns headers only');

      const expiry = await notificationAbout(ses, id, 'Status: 4.4.7');
      assert.equal(expiry.n.mail.subject, 'Undelivered Mail Returned to Sender');
      const expired = blockFor(expiry.n, 'slow@example.net');
      assert.equal(expired.get('action'), 'failed');
      assert.equal(expired.get('status'), '4.4.7');
      assert.equal(expired.get('diagnostic-code'), 'smtp; 451 4.2.2 Mailbox full, try later');
      assert.equal(expiry.n.returned.contentType, 'message/rfc822', 'RET=FULL');
      assert.equal(notificationsAbout(ses, id).length, 2, 'one warning, one expiry, despite many retries');
      const m = await relay.metrics();
      assert.equal(metricValue(m, 'ses_relay_notifications_total', { type: 'delay' }), 1);
      assert.equal(metricValue(m, 'ses_relay_notifications_total', { type: 'expiry' }), 1);
      assert.equal(metricValue(m, 'ses_relay_notifications_pending'), 0);
    } finally {
      await stopRelayProcess(relay);
      await ses.close();
    }
  });
});

describe('BOUNCE_FROM unset', () => {
  test('no DSN in EHLO, no notification for a 5xx (as before)', async () => {
    const ses = await startFakeSes();
    const relay = await startRelayProcess({ env: fakeSesEnv(ses.port) });
    try {
      const c = await RawSmtpClient.connect(relay.smtpPort);
      await c.read();
      assert.doesNotMatch((await c.command('EHLO client.test')).text, /DSN/);
      c.close();
      ses.queueRcpt('gone@example.net', FAKE_REPLIES.mailboxUnavailable);
      const id = await sendRaw(relay.smtpPort, {
        mailFrom: 'app@example.com',
        rcpts: [{ address: 'gone@example.net' }],
        data: messageData('nobody tells'),
      });
      await relay.waitForLog((l) => l.event === 'message:failed' && l.queueId === id);
      assert.deepEqual(owed(relay, id), []);
      assert.equal(ses.messages.length, 0);
    } finally {
      await stopRelayProcess(relay);
      await ses.close();
    }
  });
});
