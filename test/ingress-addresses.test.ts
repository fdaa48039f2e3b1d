/**
 * Envelope address syntax: what smtp-server refuses by itself (501) and what we refuse (553), and
 * the ASCII (IDNA) form of stored domains.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { checkAddress } from '../src/ingress/address-syntax';
import { type SmtpListener } from '../src/ingress/smtp-listener';
import { MemorySpool } from './helpers/memory-spool';
import { RawSmtpClient } from './helpers/smtp-client';
import { startTestListener } from './helpers/ingress-listener';

describe('ingress address syntax over SMTP', () => {
  let listener: SmtpListener;
  let spool: MemorySpool;
  let c: RawSmtpClient;
  before(async () => {
    spool = new MemorySpool();
    ({ listener } = await startTestListener({}, { spool }));
    c = await RawSmtpClient.connect(listener.address().port);
    await c.read();
    await c.command('EHLO client.test');
  });
  after(async () => {
    c.close();
    await listener.close(1000);
  });

  const long64 = 'a'.repeat(64);
  const long65 = 'a'.repeat(65);
  const label64 = 'b'.repeat(64);

  const senders: Array<[string, number, string?]> = [
    ['MAIL FROM:<a b@example.com>', 501],
    ['MAIL FROM:a@example.com', 501],
    ['MAIL FROM:<a@@example.com>', 501],
    ['MAIL FROM:<.a@example.com>', 501],
    ['MAIL FROM:<a\x01b@example.com>', 501],
    ['MAIL FROM:<a@exa mple.com>', 501],
    [
      `MAIL FROM:<${long65}@example.com>`,
      553,
      '553 5.1.7 Bad sender address syntax (local part longer than 64 octets)',
    ],
    [
      `MAIL FROM:<x@${label64}.com>`,
      553,
      '553 5.1.7 Bad sender address syntax (domain label longer than 63 octets)',
    ],
    ['MAIL FROM:<x@-bad.example.com>', 553],
    [
      'MAIL FROM:<jürgen@example.com>',
      553,
      '553 5.1.7 Bad sender address syntax (non-ASCII local part (no SMTPUTF8 upstream))',
    ],
    [`MAIL FROM:<${long64}@example.com>`, 250],
    ['MAIL FROM:<>', 250],
  ];
  for (const [cmd, code, text] of senders) {
    it(`${JSON.stringify(cmd.slice(0, 40))} -> ${code}`, async () => {
      const r = await c.command(cmd);
      assert.equal(r.code, code, r.text);
      if (text) assert.equal(r.text, text);
      await c.command('RSET');
    });
  }

  it('checks recipients: 501 from smtp-server, 553 5.1.3 from us, 250 for good ones', async () => {
    assert.equal((await c.command('MAIL FROM:<s@example.com>')).code, 250);
    assert.equal((await c.command('RCPT TO:<>')).code, 501);
    assert.equal((await c.command('RCPT TO:<nodomain>')).code, 501);
    assert.equal((await c.command('RCPT TO:<a b@example.net>')).code, 501);
    assert.equal(
      (await c.command('RCPT TO:<postmaster>')).text,
      '553 5.1.3 Bad recipient address syntax (missing local part or domain)',
    );
    assert.equal((await c.command(`RCPT TO:<${long65}@example.net>`)).code, 553);
    assert.equal((await c.command('RCPT TO:<r@xn--bcher-kva.example>')).code, 250);
    assert.equal((await c.command('RCPT TO:<R2@Bücher.Example>')).code, 250);
    assert.equal((await c.command('DATA')).code, 354);
    assert.equal((await c.command('x\r\n.')).code, 250);
    const m = spool.messages.at(-1);
    assert.deepEqual(m?.envelope.recipients, ['r@xn--bcher-kva.example', 'R2@xn--bcher-kva.example']);
  });
});

describe('checkAddress', () => {
  it('allows the null sender only as sender and converts domains to A-labels', () => {
    assert.deepEqual(checkAddress('', 'sender'), { ok: true, address: '' });
    assert.equal(checkAddress('', 'recipient').ok, false);
    assert.deepEqual(checkAddress('a@Bücher.example', 'recipient'), {
      ok: true,
      address: 'a@xn--bcher-kva.example',
    });
    assert.deepEqual(checkAddress('a@[192.0.2.1]', 'recipient'), { ok: true, address: 'a@[192.0.2.1]' });
    assert.equal(checkAddress('a @example.com', 'recipient').ok, false);
    assert.equal(checkAddress('ü@example.com', 'recipient').ok, false);
    assert.equal(checkAddress(`a@${'c'.repeat(250)}.com`, 'recipient').ok, false);
  });
});
