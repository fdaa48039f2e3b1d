/**
 * The envelope goes to SES byte for byte: what nodemailer does with envelope strings and address objects
 * (pinned, nodemailer-envelope.ts depends on it), and SesSmtpTransport against the fake SES reading the
 * exact RCPT lines: accepted addresses unchanged, one RCPT each; an address nodemailer would rewrite (a
 * message spooled under laxer rules) fails with 553 and is never sent.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Readable } from 'node:stream';
import MimeNode from 'nodemailer/lib/mime-node';
import nodemailerPackage from 'nodemailer/package.json';
import { checkAddress } from '../src/ingress/address-syntax';
import {
  NODEMAILER_VERSION_CHECKED,
  envelopeOf,
  upstreamForm,
} from '../src/egress/transport/nodemailer-envelope';
import { SesSmtpTransport } from '../src/egress/transport/ses-smtp-transport';
import type { Transaction } from '../src/egress/transport/transport';
import { silentLogger } from '../src/observability/logger';
import { FAKE_SES_CA, startFakeSes, type FakeSes } from './helpers/fake-ses';

/** Addresses checkAddress accepts, in the form it stores them. */
const ACCEPTED = [
  'Jane.Doe+tag@example.net',
  "o'neil@example.net",
  'a{b}|c~d=e?f^g`h#i$j&k*l/m@example.net',
  '".dot"@example.net',
  '"vic\\tim"@example.com',
  '"Quoted.Name"@example.net',
  'user@xn--bcher-kva.example',
  `${'l'.repeat(64)}@example.net`,
  'UPPER@example.net',
];

describe('nodemailer and the envelope', () => {
  it('is the nodemailer version whose behaviour was checked', () => {
    assert.equal((nodemailerPackage as { version: string }).version, NODEMAILER_VERSION_CHECKED);
  });

  it('re-parses envelope strings (why strings are never passed): comments, quotes, commas, semicolons', () => {
    const viaString = (s: string) => new MimeNode().setEnvelope({ to: [s] }).getEnvelope().to;
    assert.deepEqual(viaString('victim(x)@example.com'), ['victim@example.com']);
    assert.deepEqual(viaString('"victim"@example.com'), ['victim@example.com']);
    assert.deepEqual(viaString('x,victim@example.com'), ['x', 'victim@example.com']);
    assert.deepEqual(viaString('a;victim@example.com'), ['a', 'victim@example.com']);
    assert.deepEqual(viaString('(c)@example.com'), ['""@example.com']);
  });

  it('sends every address checkAddress accepts unchanged when given as an object', () => {
    for (const a of ACCEPTED) {
      const c = checkAddress(a, 'recipient');
      assert.ok(c.ok && c.address === a, `${a} is accepted as is`);
      assert.equal(upstreamForm(a), a);
    }
    const env = new MimeNode().setEnvelope(envelopeOf('"s"@example.net', ACCEPTED)).getEnvelope();
    assert.deepEqual(env.to, ACCEPTED, 'one envelope entry per recipient, in order');
    assert.equal(env.from, '"s"@example.net');
  });

  it('would still rewrite what the old rules let through: those are the addresses the transport refuses', () => {
    assert.equal(upstreamForm('victim(x)@example.com'), '"victim(x)"@example.com');
    assert.equal(upstreamForm('x,victim@example.com'), '"x,victim"@example.com');
    assert.equal(upstreamForm('a@[IPv6:2001:db8::1]'), 'a@[ipv6:2001:db8::1]');
    assert.equal(upstreamForm('a@Example.COM'), 'a@example.com');
  });
});

function tx(mailFrom: string, recipients: string[]): Transaction {
  const body = Buffer.from('Subject: envelope\r\n\r\nhello\r\n');
  return { id: 'ENV1', mailFrom, recipients, body: () => Readable.from([body]), size: body.length };
}

describe('SesSmtpTransport sends the envelope byte for byte', () => {
  let ses: FakeSes;
  let t: SesSmtpTransport;
  before(async () => {
    ses = await startFakeSes();
    t = new SesSmtpTransport({
      host: ses.host,
      port: ses.port,
      secure: false,
      username: ses.username,
      password: ses.password,
      poolSize: 1,
      maxMessagesPerConnection: 100,
      maxConnectionAgeMs: 60_000,
      connectionTimeoutMs: 3000,
      tls: { ca: FAKE_SES_CA },
      logger: silentLogger,
    });
  });
  after(async () => {
    await t.close();
    await ses.close();
  });

  it('accepted addresses: one RCPT line each, exactly as accepted', async () => {
    ses.reset();
    const res = await t.send(tx('"Sender"@example.net', ACCEPTED));
    assert.deepEqual(
      res.map((r) => [r.recipient, r.class]),
      ACCEPTED.map((a) => [a, 'delivered']),
    );
    assert.equal(ses.messages.length, 1);
    assert.equal(ses.messages[0].mailLine, 'MAIL FROM:<"Sender"@example.net>');
    assert.deepEqual(
      ses.messages[0].rcptLines,
      ACCEPTED.map((a) => `RCPT TO:<${a}>`),
    );
  });

  it('spooled under laxer rules: a recipient nodemailer would rewrite fails with 553 5.1.3, the rest go out', async () => {
    ses.reset();
    const old = ['victim(x)@example.com', 'x,victim@example.com', 'fine@example.net', 'a@[IPv6:2001:db8::1]'];
    const res = await t.send(tx('sender@example.net', old));
    assert.deepEqual(
      res.map((r) => [r.recipient, r.class, r.code]),
      [
        ['victim(x)@example.com', 'permanent', 553],
        ['x,victim@example.com', 'permanent', 553],
        ['fine@example.net', 'delivered', 250],
        ['a@[IPv6:2001:db8::1]', 'permanent', 553],
      ],
    );
    assert.match(res[0].reply, /^553 5\.1\.3 /);
    assert.deepEqual(ses.messages[0].rcptLines, ['RCPT TO:<fine@example.net>']);
  });

  it('a sender nodemailer would rewrite: nothing is sent, every recipient fails with 553 5.1.7', async () => {
    ses.reset();
    const res = await t.send(tx('a,b@example.net', ['one@example.net', 'two@example.net']));
    assert.deepEqual(
      res.map((r) => [r.class, r.code]),
      [
        ['permanent', 553],
        ['permanent', 553],
      ],
    );
    assert.match(res[0].reply, /^553 5\.1\.7 /);
    assert.equal(ses.messages.length, 0);
  });
});
