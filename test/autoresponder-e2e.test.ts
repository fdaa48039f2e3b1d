/**
 * The autoresponder end to end, over real sockets: a request mailed to the relay process's MX-facing
 * listener, replies delivered to a fake SES (and a second fake upstream for `send_method: "SMTP"`),
 * attachments fetched from s3rver, the suppression list in dynalite. Every reply is parsed with mailparser
 * and its headers and MIME tree checked; each no-reply rule is tried over the wire; replies of one request
 * reach SES in config order even when the first one is deferred.
 */
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { before, test } from 'node:test';
import { dkimVerify } from 'mailauth/lib/dkim/verify';
import { FAKE_REPLIES, startFakeSes, type FakeSes, type ReceivedMessage } from './helpers/fake-ses';
import { startDynalite } from './helpers/dynalite';
import { startS3rver } from './helpers/s3rver';
import { cleanupAfterAll } from './helpers/cleanup';
import {
  fakeSesEnv,
  freePort,
  metricValue,
  startRelayProcess,
  stopRelayProcess,
  tempDir,
  type RelayProcess,
} from './helpers/relay-process';
import { RawSmtpClient, testTls } from './helpers/smtp-client';
import {
  autoresponderEnv,
  mimeTree,
  parseReply,
  rawHeader,
  requestMessage,
  sendRequest,
} from './helpers/autoresponder';

const cleanups = cleanupAfterAll();
const EXE = Buffer.concat([Buffer.from('MZ'), Buffer.alloc(200_000, 0x5a), Buffer.from([0, 1, 2, 255])]);
const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const DKIM_TXT = `v=DKIM1; k=rsa; p=${publicKey.export({ type: 'spki', format: 'der' }).toString('base64')}`;

const CONFIG = [
  {
    email_addr: 'Get@example.org',
    body: [
      ['plain', 'Links: https://example.org/download'],
      ['html', '<p>Links: <a href="https://example.org/download">download</a></p>'],
    ],
    attachments: null,
    send_method: 'SES',
  },
  {
    email_addr: 'get@example.org',
    body: 'The software is attached.',
    attachments: [['downloads', 'win/psiphon.exe', 'psiphon3.exe']],
    send_method: 'SES',
  },
  { email_addr: 'tools@example.org', body: 'via SES', attachments: null, send_method: 'SES' },
  {
    email_addr: 'tools@example.org',
    body: 'via the second upstream',
    attachments: null,
    send_method: 'SMTP',
  },
];

let ses: FakeSes;
let second: FakeSes;
let relay: RelayProcess;
let port: number;

before(async () => {
  const s3 = await startS3rver(['downloads']);
  cleanups.push(() => s3.close());
  await s3.put('downloads', 'win/psiphon.exe', EXE);
  const db = await startDynalite();
  cleanups.push(() => db.close());
  await db.createTable('suppression');
  await db.put('suppression', { email: { S: 'bounced@example.com' }, reason: { S: 'bounce' } });
  ses = await startFakeSes();
  cleanups.push(() => ses.close());
  second = await startFakeSes({ username: 'relayuser', password: 'second-secret' });
  cleanups.push(() => second.close());
  port = await freePort();
  const keyFile = path.join(tempDir('dkim-key-'), 'dkim.pem');
  fs.writeFileSync(keyFile, privateKey.export({ type: 'pkcs8', format: 'pem' }));
  const tls = testTls();
  const { env } = autoresponderEnv(CONFIG, port, {
    AUTORESPONDER_BLOCKED_DOMAINS: 'blocked.example',
    AUTORESPONDER_EXEMPT_DOMAINS: 'exempt.example',
    AUTORESPONDER_SMTP_URL: `smtp://relayuser:second-secret@127.0.0.1:${second.port}`,
    DKIM_DOMAIN: 'example.org',
    DKIM_SELECTOR: 'responder',
    DKIM_PRIVATE_KEY_PATH: keyFile,
    SSL_CERT_PATH: tls.certPath,
    SSL_KEY_PATH: tls.keyPath,
    USE_BLOCKLIST: 'true',
    DYNAMODB_TABLE: 'suppression',
  });
  relay = await startRelayProcess({ env: { ...fakeSesEnv(ses.port), ...env, ...db.env, ...s3.env } });
  cleanups.push(() => stopRelayProcess(relay));
});

const text = (m: ReceivedMessage) => m.body.toString('latin1');

/** Wait until the spool is empty (every stored reply was delivered or refused). */
async function drained(): Promise<void> {
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    if (metricValue(await relay.metrics(), 'ses_relay_queue_messages') === 0) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('spool not drained');
}

test('RCPT: configured address 250 (any case), unknown local part 550 5.1.1, other domain 550 5.7.1; STARTTLS, no AUTH', async () => {
  const c = await RawSmtpClient.connect(port);
  cleanups.push(() => c.close());
  assert.match((await c.read()).text, /^220 .*autoresponder/);
  const ehlo = await c.command('EHLO mx.example.net');
  assert.match(ehlo.text, /STARTTLS/);
  assert.doesNotMatch(ehlo.text, /AUTH/);
  assert.equal((await c.command('MAIL FROM:<someone@example.net>')).code, 250);
  assert.equal((await c.command('RCPT TO:<GET@Example.ORG>')).code, 250);
  const unknown = await c.command('RCPT TO:<nobody@example.org>');
  assert.equal(unknown.text, '550 5.1.1 Recipient address rejected: no such autoresponder address');
  const relayTry = await c.command('RCPT TO:<victim@gmail.example>');
  assert.equal(relayTry.text, '550 5.7.1 Relay access denied: not an autoresponder domain');
  for (const spelling of ['"get"@example.org', 'get@example.org.', 'get%victim.example@example.org']) {
    const r = await c.command(`RCPT TO:<${spelling}>`);
    assert.ok(r.code >= 500 && r.code < 600, `${spelling}: ${r.text}`);
  }
  assert.equal((await c.command('AUTH PLAIN AGFiAGM=')).code >= 500, true, 'no AUTH on the front door');
  c.close();
  const m = await relay.metrics();
  assert.equal(
    metricValue(m, 'ses_relay_autoresponder_smtp_rejections_total', { reply: 'autoresponderRelayDenied' }),
    1,
  );
});

test('an answered request: every reply through SES in config order, headers and MIME tree as specified', async () => {
  ses.reset();
  const messageId = '<CAF=req.1+x@mail.example.com>';
  const r = await sendRequest(
    port,
    requestMessage({
      from: `"O'Brien, Pat" <o'brien@example.com>`,
      subject: 'Re: send me psiphon',
      messageId,
    }),
    { from: "o'brien@example.com", to: ['get@example.org'] },
  );
  assert.ok(r.ok, r.response);
  assert.match(r.response, /^250 2\.0\.0 Ok: request received [0-9a-f]+$/);
  await ses.waitFor(2, 15_000);
  const [links, software] = ses.messages;
  for (const m of [links, software]) {
    assert.equal(m.mailFrom, 'noreply@example.org');
    assert.deepEqual(m.recipients, ["o'brien@example.com"], 'the local part exactly as written');
    const raw = text(m);
    assert.deepEqual(rawHeader(raw, 'To'), ["o'brien@example.com"]);
    assert.deepEqual(rawHeader(raw, 'Subject'), ['Re: send me psiphon'], 'no second Re:');
    assert.deepEqual(rawHeader(raw, 'In-Reply-To'), [messageId]);
    assert.deepEqual(rawHeader(raw, 'References'), [messageId]);
    assert.deepEqual(rawHeader(raw, 'Auto-Submitted'), ['auto-replied']);
    const mail = await parseReply(m.body);
    assert.equal(mail.replyTo?.value[0].address?.toLowerCase(), 'get@example.org');
    assert.equal(mail.from?.value[0].address, 'noreply@example.org');
    assert.match(mail.messageId ?? '', /@example\.org>$/);
    assert.notEqual(mail.messageId, messageId);
    assert.ok(mail.date instanceof Date && Math.abs(mail.date.getTime() - Date.now()) < 60_000);
  }
  const first = mimeTree(text(links));
  assert.equal(first.type, 'multipart/mixed');
  assert.deepEqual(
    first.children[0].children.map((c) => [c.type, c.charset]),
    [
      ['text/plain', 'utf-8'],
      ['text/html', 'utf-8'],
    ],
  );
  const tree = mimeTree(text(software));
  assert.deepEqual(
    tree.children.map((c) => c.type),
    ['multipart/alternative', 'application/octet-stream'],
  );
  assert.equal(tree.children[1].encoding, 'base64');
  const mail = await parseReply(software.body);
  assert.equal(mail.attachments[0].filename, 'psiphon3.exe');
  assert.deepEqual(mail.attachments[0].content, EXE, 'the S3 object byte for byte');

  const m = await relay.metrics();
  assert.equal(metricValue(m, 'ses_relay_autoresponder_requests_total', { result: 'answered' }), 1);
  assert.equal(metricValue(m, 'ses_relay_autoresponder_replies_total'), 2);
  const line = await relay.waitForLog((l) => l.event === 'autoresponder:request' && l.result === 'answered');
  assert.match(String(line.requester), /^[\w-]{16}$/, 'the requester as a keyed hash');
  assert.ok(!JSON.stringify(line).includes('brien'), 'the address is not in the request line');
});

test('send_method "SMTP" leaves through AUTORESPONDER_SMTP_URL, DKIM-signed; "SES" through SES', async () => {
  ses.reset();
  second.reset();
  const r = await sendRequest(port, requestMessage({ from: 'pat@example.net', to: 'tools@example.org' }), {
    from: 'pat@example.net',
    to: ['tools@example.org'],
  });
  assert.ok(r.ok, r.response);
  await ses.waitFor(1, 15_000);
  await second.waitFor(1, 15_000);
  assert.match(text(ses.messages[0]), /via SES/);
  assert.doesNotMatch(text(ses.messages[0]), /^DKIM-Signature:/im, 'SES signs its own');
  const viaSmtp = second.messages[0];
  assert.match(text(viaSmtp), /via the second upstream/);
  assert.deepEqual(viaSmtp.recipients, ['pat@example.net']);
  const resolver = async (name: string, type: string) => {
    if (type === 'TXT' && name === 'responder._domainkey.example.org') return [[DKIM_TXT]];
    throw Object.assign(new Error('not found'), { code: 'ENOTFOUND' });
  };
  const verified = await dkimVerify(viaSmtp.body, { resolver });
  assert.equal(verified.results[0]?.status.result, 'pass', JSON.stringify(verified.results));
  assert.equal(verified.results[0]?.signingDomain, 'example.org');
  assert.ok(!JSON.stringify(relay.logs).includes('second-secret'), 'the URL password never reaches the logs');
});

test('every no-reply rule: 250, counted by reason, no reply sent', async () => {
  ses.reset();
  const cases: Array<{ result: string; raw: string; from?: string }> = [
    { result: 'null-sender', raw: requestMessage(), from: '' },
    { result: 'auto-submitted', raw: requestMessage({ headers: ['Auto-Submitted: auto-replied'] }) },
    { result: 'precedence', raw: requestMessage({ headers: ['Precedence: bulk'] }) },
    { result: 'mailing-list', raw: requestMessage({ headers: ['List-Id: <news.example.net>'] }) },
    {
      result: 'mailing-list',
      raw: requestMessage({ headers: ['List-Unsubscribe: <mailto:u@example.net>'] }),
    },
    { result: 'response-suppressed', raw: requestMessage({ headers: ['X-Auto-Response-Suppress: All'] }) },
    { result: 'autoreply-header', raw: requestMessage({ headers: ['X-Autoreply: yes'] }) },
    { result: 'system-sender', raw: requestMessage({ from: 'MAILER-DAEMON@mx.example.net' }) },
    { result: 'system-sender', raw: requestMessage({ from: 'no-reply@shop.example.net' }) },
    { result: 'own-domain', raw: requestMessage({ from: 'someone@example.org' }) },
    { result: 'blocked-domain', raw: requestMessage({ from: 'a@blocked.example' }) },
    { result: 'invalid-requester', raw: requestMessage({ from: 'a@example.net, b@example.net' }) },
    { result: 'suppressed', raw: requestMessage({ from: 'Bounced@Example.com' }) },
  ];
  for (const c of cases) {
    const r = await sendRequest(port, c.raw, {
      from: c.from ?? 'requester@example.net',
      to: ['get@example.org'],
    });
    assert.ok(r.ok && r.code === 250, `${c.result}: ${r.response}`);
  }
  // Daily limit: the fourth request of one requester gets nothing; a resent Message-ID gets nothing twice.
  const limited = [1, 2, 3, 4].map((i) =>
    requestMessage({ from: 'limited@example.net', messageId: `<lim-${i}@x>` }),
  );
  for (const raw of limited) assert.ok((await sendRequest(port, raw)).ok);
  const once = requestMessage({ from: 'once@example.net', messageId: '<resent-1@example.net>' });
  assert.ok((await sendRequest(port, once)).ok);
  assert.ok((await sendRequest(port, once)).ok);
  // Exempt domains are never limited.
  for (let i = 0; i < 4; i++)
    assert.ok((await sendRequest(port, requestMessage({ from: 'qa@exempt.example' }))).ok);
  await drained();

  const m = await relay.metrics();
  const expected: Record<string, number> = {};
  for (const c of cases) expected[c.result] = (expected[c.result] ?? 0) + 1;
  expected['daily-limit'] = 1;
  expected['already-answered'] = 1;
  for (const [result, n] of Object.entries(expected)) {
    assert.equal(metricValue(m, 'ses_relay_autoresponder_requests_total', { result }), n, result);
  }
  const answered = 3 + 1 + 4;
  assert.equal(ses.messages.length, answered * 2, 'two replies per answered request, none for the rest');
  const recipients = new Set(ses.messages.flatMap((x) => x.recipients));
  assert.deepEqual([...recipients].sort(), ['limited@example.net', 'once@example.net', 'qa@exempt.example']);
});

test('replies of one request reach SES in config order: the second waits while the first is deferred', async () => {
  ses.reset();
  let attempts = 0;
  ses.script((ctx) => {
    if (ctx.phase !== 'data') return undefined;
    attempts++;
    return attempts === 1 ? FAKE_REPLIES.temporaryFailure : undefined; // the first reply's first attempt: 451
  });
  const deferredBefore = relay.logs.filter((l) => l.event === 'message:deferred').length;
  const r = await sendRequest(port, requestMessage({ from: 'order@example.net' }), {
    from: 'order@example.net',
    to: ['get@example.org'],
  });
  assert.ok(r.ok);
  await ses.waitFor(2, 20_000);
  ses.script(undefined);
  assert.match(text(ses.messages[0]), /Links: https/, 'the first configured reply first');
  assert.match(text(ses.messages[1]), /The software is attached/);
  assert.equal(
    attempts,
    3,
    'one refused attempt of the first reply, then each once; the second never went first',
  );
  const deferred = relay.logs.filter((l) => l.event === 'message:deferred');
  assert.equal(deferred.length - deferredBefore, 1);
});

test('a client that drops mid-DATA leaves nothing behind; the front door keeps answering and stops cleanly', async () => {
  const before = await relay.metrics();
  const count = (m: string) => metricValue(m, 'ses_relay_autoresponder_requests_total');
  for (let i = 0; i < 3; i++) {
    const c = await RawSmtpClient.connect(port);
    await c.read();
    await c.command('EHLO mx.example.net');
    await c.command('MAIL FROM:<gone@example.net>');
    await c.command('RCPT TO:<get@example.org>');
    assert.equal((await c.command('DATA')).code, 354);
    c.write('From: gone@example.net\r\nSubject: half a mes');
    await new Promise((r) => setTimeout(r, 50));
    c.close();
  }
  await new Promise((r) => setTimeout(r, 300));
  ses.reset();
  const r = await sendRequest(port, requestMessage({ from: 'after@example.net' }), {
    from: 'after@example.net',
    to: ['get@example.org'],
  });
  assert.ok(r.ok, r.response);
  await ses.waitFor(2, 15_000);
  assert.equal(count(await relay.metrics()), count(before) + 1, 'only the complete request was counted');
  const idle = await RawSmtpClient.connect(port); // an idle session must not hold the stop up
  await idle.read();
  const started = Date.now();
  assert.equal(await stopRelayProcess(relay), 0);
  assert.ok(Date.now() - started < 8_000, 'stopped within the grace period');
  idle.close();
});
