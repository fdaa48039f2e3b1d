/**
 * The benchmarks' private Postfix instance (bench/lib/postfix.ts) as a relay in front of the fake SES:
 * every message it accepts goes upstream over STARTTLS with SASL AUTH (the fake offers AUTH only after
 * STARTTLS and refuses mail without it), and a 454 from SES leaves the message deferred in Postfix's queue
 * to be retried. Needs root and Debian's postfix package; skipped loudly otherwise.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import nodemailer from 'nodemailer';
import { FAKE_REPLIES, startFakeSes } from './helpers/fake-ses';
import { TEST_CA } from './helpers/relay-process';
import { cleanupAfterAll } from './helpers/cleanup';
import { FAST_RETRY, postfixUnavailable, relayhostSettings, startPostfix } from '../bench/lib/postfix';

const skip = postfixUnavailable() ?? false;
if (skip) console.error(`SKIP bench-postfix.test.ts: ${skip}`);

const cleanups = cleanupAfterAll();

async function submit(port: number, subject: string, to: string[]): Promise<void> {
  const client = nodemailer.createTransport({ host: '127.0.0.1', port, secure: false, ignoreTLS: true });
  try {
    await client.sendMail({
      envelope: { from: 'sender@bench.example', to },
      raw: `From: sender@bench.example\r\nTo: r@bench.example\r\nSubject: ${subject}\r\n\r\nHello\r\n`,
    });
  } finally {
    client.close();
  }
}

test('relayhost settings: mandatory TLS, SASL with static credentials, nothing deferred', () => {
  const s = relayhostSettings(
    { host: '127.0.0.1', port: 2587, username: 'AKIAFAKE', password: 'fake-secret', caFile: TEST_CA },
    '/x/ca.pem',
  );
  assert.equal(s.relayhost, '[127.0.0.1]:2587');
  assert.equal(s.smtp_tls_security_level, 'encrypt');
  assert.equal(s.smtp_tls_CAfile, '/x/ca.pem');
  assert.equal(s.smtp_sasl_password_maps, 'static:AKIAFAKE:fake-secret');
  assert.equal(s.defer_transports, '');
  assert.throws(() =>
    relayhostSettings({ host: 'h', port: 1, username: 'a b', password: 'p', caFile: TEST_CA }, '/x'),
  );
});

test('Postfix relays to the fake SES over STARTTLS + AUTH and retries a 454', { skip }, async () => {
  const ses = await startFakeSes();
  cleanups.push(() => ses.close());
  const pf = await startPostfix({
    relayhost: {
      host: ses.host,
      port: ses.port,
      username: ses.username,
      password: ses.password,
      caFile: TEST_CA,
    },
    mainCf: FAST_RETRY, // retry deferred mail within seconds
  });
  cleanups.push(() => pf.stop());

  await submit(pf.port, 'first', ['a@bench.example', 'b@bench.example']);
  await ses.waitFor(1, 30_000);
  assert.deepEqual([...ses.messages[0].recipients].sort(), ['a@bench.example', 'b@bench.example']);
  assert.match(ses.messages[0].body.toString(), /Subject: first/);
  assert.ok(ses.authCount >= 1, 'Postfix authenticated (the fake offers AUTH only over TLS)');
  assert.match(pf.log(), /Trusted TLS connection established to 127\.0\.0\.1/);

  ses.queueData(FAKE_REPLIES.throttling);
  await submit(pf.port, 'second', ['c@bench.example']);
  await ses.waitFor(2, 30_000);
  assert.match(ses.messages[1].body.toString(), /Subject: second/);
  assert.match(pf.log(), /454 Throttling failure/, 'the first attempt was deferred with SES reply');
});
