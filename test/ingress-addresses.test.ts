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
      'MAIL FROM:<a(c)@example.com>',
      553,
      '553 5.1.7 Bad sender address syntax (local part is not a dot-atom or quoted string (comment or special character))',
    ],
    ['MAIL FROM:<a,b@example.com>', 553],
    ['MAIL FROM:<a%b@example.com>', 553],
    ['MAIL FROM:<a@[192.0.2.1]>', 553],
    ['MAIL FROM:<"quoted"@example.com>', 250],
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
    assert.deepEqual(checkAddress('', 'sender'), { ok: true, address: '', key: '' });
    assert.equal(checkAddress('', 'recipient').ok, false);
    assert.deepEqual(checkAddress('A@Bücher.example', 'recipient'), {
      ok: true,
      address: 'A@xn--bcher-kva.example',
      key: 'a@xn--bcher-kva.example',
    });
    assert.equal(checkAddress('a @example.com', 'recipient').ok, false);
    assert.equal(checkAddress('ü@example.com', 'recipient').ok, false);
    assert.equal(checkAddress(`a@${'c'.repeat(250)}.com`, 'recipient').ok, false);
  });

  it('keeps quoted local parts byte for byte; the key is unquoted, quoted-pairs resolved, lower case', () => {
    for (const [address, key] of [
      ['"victim"@example.com', 'victim@example.com'],
      ['"VIC\\tim"@Example.COM', 'victim@example.com'],
      ['".dot"@example.com', '.dot@example.com'],
      ['"Quoted.Name"@example.com', 'quoted.name@example.com'],
    ]) {
      const c = checkAddress(address, 'recipient');
      assert.ok(c.ok, address);
      assert.equal(c.address, address.replace('Example.COM', 'example.com'));
      assert.equal(c.key, key);
    }
  });

  it('refuses every spelling without one unambiguous meaning, with the reason', () => {
    const refused: Array<[string, RegExp]> = [
      ['victim(x)@example.com', /comment or special/],
      ['x,victim@example.com', /comment or special/],
      ['a;victim@example.com', /comment or special/],
      ['vic\\tim@example.com', /comment or special/],
      ['"x,victim"@example.com', /quoted local part with special/],
      ['""@example.com', /quoted local part with special characters or empty/],
      ['"a"b"@example.com', /malformed quoted/],
      ['"a\\"@example.com', /malformed quoted/],
      ['"a@b"@example.com', /quoted local part with special/],
      ['a@b@example.com', /comment or special/],
      ['victim%example.com@relay.example', /routing/],
      ['"victim%example.com"@relay.example', /routing/],
      ['host!victim@relay.example', /routing/],
      ['a@[192.0.2.1]', /address literals/],
      ['a@[IPv6:2001:db8::1]', /address literals/],
      ['a@192.0.2.1', /not a valid/],
      ['a@0x7f.1', /not a valid/],
      ['a@example.123', /not a valid/],
      ['a@localhost', /not fully qualified/],
      ['a@example.com.', /not a valid/],
      ['a@ex%41mple.com', /not a valid/],
      ['a@under_score.example', /bad domain label/],
      ['a@-bad.example', /bad domain label/],
      ['a@xn--zz.example', /not a valid/],
      ['postmaster', /missing local part or domain/],
      [`${'a'.repeat(65)}@example.com`, /local part longer than 64/],
      [`"${'a'.repeat(63)}"@example.com`, /local part longer than 64/],
      [`a@${'b'.repeat(64)}.com`, /label longer than 63/],
    ];
    for (const [address, reason] of refused) {
      const c = checkAddress(address, 'recipient');
      assert.equal(c.ok, false, address);
      assert.match(c.ok ? '' : c.reason, reason, address);
    }
  });

  it('limits the whole address to 254 octets in ASCII form (a 256-octet path)', () => {
    const d = `${'d'.repeat(63)}.${'e'.repeat(63)}.${'f'.repeat(63)}.${'g'.repeat(40)}.example`;
    assert.equal(d.length, 240);
    assert.ok(checkAddress(`${'a'.repeat(13)}@${d}`, 'recipient').ok, '254 octets');
    const c = checkAddress(`${'a'.repeat(14)}@${d}`, 'recipient');
    assert.ok(!c.ok && /longer than 254/.test(c.reason), '255 octets');
    // Unicode that grows past the limit once converted to A-labels.
    const l = `${'a'.repeat(54)}ü`; // 55 characters, 62 octets as an A-label
    const unicode = `${'a'.repeat(10)}@${[l, l, l, l].join('.')}`;
    assert.ok(unicode.length <= 253, 'short enough for smtp-server');
    const u = checkAddress(unicode, 'recipient');
    assert.ok(!u.ok && /address longer than 254/.test(u.reason), 'too long once in A-labels');
  });
});
