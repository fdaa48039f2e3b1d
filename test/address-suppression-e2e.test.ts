/**
 * Envelope address spellings against the suppression list, end to end: a real relay process (node
 * dist/main.js), dynalite as the suppression table, and the fake SES recording every MAIL/RCPT command
 * line exactly as it arrived. For each spelling of a suppressed `victim@example.com` (comments, quotes,
 * quoted-pairs, commas, semicolons, `%`/`!` routing, source routes, IP literals, case, IDNA tricks) the
 * relay must either refuse it at RCPT or suppress it; every accepted recipient must reach SES as exactly
 * one RCPT line carrying the accepted address byte for byte. Run `npm run build` first.
 */
import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';
import { startDynalite, type Dynalite } from './helpers/dynalite';
import { startFakeSes, type FakeSes, type ReceivedMessage } from './helpers/fake-ses';
import { markerOf } from './helpers/mail';
import { fakeSesEnv, startRelayProcess, stopRelayProcess, type RelayProcess } from './helpers/relay-process';
import { RawSmtpClient } from './helpers/smtp-client';
import { cleanupAfterAll } from './helpers/cleanup';

const TABLE = 'address-suppression';
const cleanups = cleanupAfterAll();
let db: Dynalite;

before(async () => {
  db = await startDynalite();
  cleanups.push(() => db.close());
  await db.createTable(TABLE);
  for (const email of ['victim@example.com', 'victim@xn--bcher-kva.example', '@blocked.example']) {
    await db.put(TABLE, { email: { S: email }, reason: { S: 'bounce' } });
  }
});

async function relayWith(ses: FakeSes, action: 'drop' | 'reject'): Promise<RelayProcess> {
  const relay = await startRelayProcess({
    env: {
      ...fakeSesEnv(ses.port),
      ...db.env,
      SES_RATE_LIMIT: '200',
      USE_BLOCKLIST: 'true',
      DYNAMODB_TABLE: TABLE,
      BLOCKLIST_ACTION: action,
    },
  });
  cleanups.push(() => stopRelayProcess(relay));
  return relay;
}

async function startSes(): Promise<FakeSes> {
  const ses = await startFakeSes();
  cleanups.push(() => ses.close());
  return ses;
}

/** What must become of a recipient spelling. */
type Expect = 'refuse' | 'suppress' | { rcpt: string };

/** Spellings that name the suppressed victim@example.com (or another suppressed entry). */
const BYPASSES: Array<[string, Expect]> = [
  // RFC 5322 comments: not allowed in an RFC 5321 path.
  ['victim(x)@example.com', 'refuse'],
  ['(c)victim@example.com', 'refuse'],
  ['(c)@example.com', 'refuse'],
  ['victim@(c)example.com', 'refuse'],
  // List separators nodemailer used to split on.
  ['x,victim@example.com', 'refuse'],
  ['a;victim@example.com', 'refuse'],
  ['victim,@example.com', 'refuse'],
  // Quoted strings and quoted-pairs: the same mailbox as the unquoted form.
  ['"victim"@example.com', 'suppress'],
  ['"VICTIM"@EXAMPLE.COM', 'suppress'],
  ['"vic\\tim"@example.com', 'suppress'],
  ['"\\v\\i\\c\\t\\i\\m"@example.com', 'suppress'],
  ['"x,victim"@example.com', 'refuse'],
  ['"a;victim"@example.com', 'refuse'],
  ['"victim(x)"@example.com', 'refuse'],
  ['"victim\\"@example.com', 'refuse'],
  ['""@example.com', 'refuse'],
  ['"vic"tim@example.com', 'refuse'],
  ['vic\\tim@example.com', 'refuse'],
  // Sender-specified routing (Postfix's allow_percent_hack / swap_bangpath would deliver these to victim).
  ['victim%example.com@relay.example', 'refuse'],
  ['"victim%example.com"@relay.example', 'refuse'],
  ['example.com!victim@relay.example', 'refuse'],
  // Source routes: RFC 5321 4.1.2 says accept and ignore them, so the mailbox is victim@example.com.
  ['@relay.example:victim@example.com', 'suppress'],
  ['@a.example,@b.example:victim@example.com', 'suppress'],
  // Address literals and numeric "domains".
  ['victim@[192.0.2.1]', 'refuse'],
  ['victim@[IPv6:2001:db8::1]', 'refuse'],
  ['victim@192.0.2.1', 'refuse'],
  ['victim@0x7f.1', 'refuse'],
  // Trailing dots.
  ['victim@example.com.', 'refuse'],
  ['victim.@example.com', 'refuse'],
  // Case and IDNA: one canonical key.
  ['VICTIM@Example.COM', 'suppress'],
  ['victim@ｅxample.com', 'suppress'], // fullwidth e: UTS 46 maps it to example.com
  ['victim@exa\u00admple.com', 'suppress'], // soft hyphen: mapped away
  ['victim@Bücher.example', 'suppress'],
  ['victim@XN--BCHER-KVA.example', 'suppress'],
  ['anyone@BLOCKED.example', 'suppress'],
  ['anyone@blöcked.example', { rcpt: 'RCPT TO:<anyone@xn--blcked-xxa.example>' }], // another domain
  // Non-ASCII local part: no SMTPUTF8 upstream.
  ['vîctim@example.com', 'refuse'],
  ['victim\u00ad@example.com', 'refuse'],
];

const LONG_LOCAL = 'l'.repeat(64);
const LONG_DOMAIN = `${'d'.repeat(63)}.${'e'.repeat(63)}.${'f'.repeat(63)}.${'g'.repeat(40)}.example`;

/** Ordinary and unusual but valid addresses: delivered as exactly this RCPT line. */
const VALID: Array<[string, Expect]> = [
  ['Jane.Doe+tag@example.net', { rcpt: 'RCPT TO:<Jane.Doe+tag@example.net>' }],
  ["o'neil@Example.NET", { rcpt: "RCPT TO:<o'neil@example.net>" }],
  ['a{b}|c~d=e?f^g`h#i$j&k*l/m@example.net', { rcpt: 'RCPT TO:<a{b}|c~d=e?f^g`h#i$j&k*l/m@example.net>' }],
  ['".dot"@example.net', { rcpt: 'RCPT TO:<".dot"@example.net>' }],
  ['"Quoted.Name"@example.net', { rcpt: 'RCPT TO:<"Quoted.Name"@example.net>' }],
  ['user@bücher.example', { rcpt: 'RCPT TO:<user@xn--bcher-kva.example>' }],
  [`${LONG_LOCAL}@example.net`, { rcpt: `RCPT TO:<${LONG_LOCAL}@example.net>` }],
  [`${'m'.repeat(65)}@example.net`, 'refuse'],
  [`u@${LONG_DOMAIN}`, { rcpt: `RCPT TO:<u@${LONG_DOMAIN}>` }],
  [`u@${'x'.repeat(64)}.example`, 'refuse'],
];

/** One SMTP session: MAIL FROM, every spelling, a control recipient, DATA. Returns the RCPT replies. */
async function sendSpellings(
  relay: RelayProcess,
  marker: string,
  spellings: string[],
): Promise<{ replies: string[]; dataReply: string }> {
  const c = await RawSmtpClient.connect(relay.smtpPort);
  try {
    assert.equal((await c.read()).code, 220);
    assert.equal((await c.command('EHLO client.test')).code, 250);
    assert.equal((await c.command('MAIL FROM:<sender@example.net>')).code, 250);
    const replies: string[] = [];
    for (const s of spellings) replies.push((await c.command(`RCPT TO:<${s}>`)).text);
    assert.equal((await c.command('RCPT TO:<control@example.net>')).code, 250);
    assert.equal((await c.command('DATA')).code, 354);
    const data = await c.command(`Subject: ${marker}\r\nX-Test-Marker: ${marker}\r\n\r\nhello\r\n.`);
    await c.command('QUIT');
    return { replies, dataReply: data.text };
  } finally {
    c.close();
  }
}

const transactionsOf = (ses: FakeSes, marker: string): ReceivedMessage[] =>
  ses.messages.filter((m) => markerOf(m.body) === marker);

/** Checks every spelling's fate; returns the RCPT lines SES must have received (control included). */
function checkReplies(cases: Array<[string, Expect]>, replies: string[], suppressedReply?: RegExp): string[] {
  const expectedLines: string[] = [];
  cases.forEach(([spelling, expect], i) => {
    const reply = replies[i];
    const what = `${JSON.stringify(spelling)} -> ${JSON.stringify(reply)}`;
    if (expect === 'refuse') {
      assert.match(reply, /^(553 5\.1\.3 |501 )/, `refused at RCPT: ${what}`);
    } else if (expect === 'suppress' && suppressedReply) {
      assert.match(reply, suppressedReply, `refused as suppressed: ${what}`);
    } else {
      assert.match(reply, /^250 /, `accepted: ${what}`);
      if (typeof expect === 'object') expectedLines.push(expect.rcpt);
    }
  });
  return [...expectedLines, 'RCPT TO:<control@example.net>'];
}

describe('address spellings and the suppression list (real relay, dynalite, fake SES)', () => {
  test('drop: every spelling of a suppressed address is refused at RCPT or suppressed; accepted ones go upstream byte for byte, one RCPT each', async () => {
    const ses = await startSes();
    const relay = await relayWith(ses, 'drop');
    for (const [name, cases] of [
      ['bypass', BYPASSES],
      ['valid', VALID],
    ] as const) {
      const { replies, dataReply } = await sendSpellings(
        relay,
        name,
        cases.map(([s]) => s),
      );
      assert.match(dataReply, /^250 /);
      await ses.waitFor(() => transactionsOf(ses, name).length > 0, 15_000);
      const txs = transactionsOf(ses, name);
      assert.doesNotMatch(
        (txs[0].rcptLines ?? []).join('\n'),
        /victim|blocked\.example/i,
        'nothing suppressed upstream',
      );
      const expectedLines = checkReplies(cases, replies);
      assert.equal(txs.length, 1, 'one upstream transaction');
      assert.equal(txs[0].mailLine, 'MAIL FROM:<sender@example.net>');
      assert.deepEqual(
        txs[0].rcptLines,
        expectedLines,
        'exactly the accepted, unsuppressed recipients, once each, byte for byte',
      );
    }
  });

  test('reject: spellings that name a suppressed address get 550 5.7.1 at RCPT', async () => {
    const ses = await startSes();
    const relay = await relayWith(ses, 'reject');
    const { replies, dataReply } = await sendSpellings(
      relay,
      'reject',
      BYPASSES.map(([s]) => s),
    );
    assert.match(dataReply, /^250 /);
    const expectedLines = checkReplies(BYPASSES, replies, /^550 5\.7\.1 /);
    await ses.waitFor(() => transactionsOf(ses, 'reject').length > 0, 15_000);
    assert.deepEqual(transactionsOf(ses, 'reject')[0].rcptLines, expectedLines);
  });

  test('spellings of one mailbox in one message: one upstream RCPT, one token', async () => {
    const ses = await startSes();
    const relay = await relayWith(ses, 'drop');
    const spellings = ['same@example.net', '"same"@example.net', 'SAME@Example.NET', '"S\\ame"@example.net'];
    const { replies, dataReply } = await sendSpellings(relay, 'same-mailbox', spellings);
    assert.ok(
      replies.every((r) => r.startsWith('250 ')),
      replies.join(' | '),
    );
    assert.match(dataReply, /^250 /);
    await ses.waitFor(() => transactionsOf(ses, 'same-mailbox').length > 0, 15_000);
    const lines = transactionsOf(ses, 'same-mailbox')[0].rcptLines ?? [];
    assert.equal(lines.length, 2, lines.join(' | '));
    assert.equal(lines[1], 'RCPT TO:<control@example.net>');
    // smtp-server keeps the latest of spellings equal but for case; any accepted spelling is right.
    assert.ok(
      spellings.some((s) => lines[0] === `RCPT TO:<${s.replace('Example.NET', 'example.net')}>`),
      lines[0],
    );
  });

  test('MAIL FROM: the same rules (553 5.1.7), accepted senders go upstream byte for byte', async () => {
    const ses = await startSes();
    const relay = await relayWith(ses, 'drop');
    const senders: Array<[string, 'refuse' | string]> = [
      ['sender(x)@example.net', 'refuse'],
      ['a,b@example.net', 'refuse'],
      ['a;b@example.net', 'refuse'],
      ['"a,b"@example.net', 'refuse'],
      ['a%b@example.net', 'refuse'],
      ['a!b@example.net', 'refuse'],
      ['a@[192.0.2.1]', 'refuse'],
      ['sénder@example.net', 'refuse'],
      ['"Sender"@Example.NET', 'MAIL FROM:<"Sender"@example.net>'],
      ['@route.example:bounce@example.net', 'MAIL FROM:<bounce@example.net>'],
      ['Bounce+X@bücher.example', 'MAIL FROM:<Bounce+X@xn--bcher-kva.example>'],
      ['', 'MAIL FROM:<>'],
    ];
    const c = await RawSmtpClient.connect(relay.smtpPort);
    cleanups.push(async () => c.close());
    assert.equal((await c.read()).code, 220);
    assert.equal((await c.command('EHLO client.test')).code, 250);
    for (const [i, [sender, expect]] of senders.entries()) {
      const reply = (await c.command(`MAIL FROM:<${sender}>`)).text;
      if (expect === 'refuse') {
        assert.match(reply, /^(553 5\.1\.7 |501 )/, `${JSON.stringify(sender)} -> ${reply}`);
        continue;
      }
      assert.match(reply, /^250 /, `${JSON.stringify(sender)} -> ${reply}`);
      assert.equal((await c.command('RCPT TO:<to@example.net>')).code, 250);
      assert.equal((await c.command('DATA')).code, 354);
      const marker = `sender-${i}`;
      assert.match((await c.command(`X-Test-Marker: ${marker}\r\n\r\nhi\r\n.`)).text, /^250 /);
      await ses.waitFor(() => transactionsOf(ses, marker).length > 0, 15_000);
      assert.equal(transactionsOf(ses, marker)[0].mailLine, expect);
    }
  });
});
