/**
 * Ingress access control without users: only trusted networks may send (no open relay); CIDR
 * matching with IPv4-mapped IPv6 addresses.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import nodemailer from 'nodemailer';
import { silentLogger } from '../src/observability/logger';
import { TrustedNetworks } from '../src/ingress/client-access';
import { createSmtpListener } from '../src/ingress/smtp-listener';
import { MemorySpool } from './helpers/memory-spool';
import { RawSmtpClient, testIngressConfig } from './helpers/smtp-client';
import { startTestListener } from './helpers/ingress-listener';

describe('ingress without users', () => {
  it('refuses untrusted clients at MAIL FROM with 550 5.7.1 and does not offer AUTH', async () => {
    const { listener, spool } = await startTestListener({ trustedNetworks: ['10.0.0.0/8'] });
    const c = await RawSmtpClient.connect(listener.address().port);
    try {
      await c.read();
      const ehlo = await c.command('EHLO client.test');
      assert.ok(!ehlo.lines.some((l) => l.includes('AUTH')), ehlo.text);
      assert.equal((await c.command('MAIL FROM:<a@example.com>')).text, '550 5.7.1 Relay access denied');
      assert.equal((await c.command('MAIL FROM:<>')).code, 550);
      assert.equal((await c.command('RCPT TO:<b@example.net>')).code, 503);
      assert.equal((await c.command('AUTH PLAIN AGFAYg==')).code, 500);
      assert.equal(spool.messages.length, 0);
    } finally {
      c.close();
      await listener.close(1000);
    }
  });

  it('accepts a trusted client on a dual-stack listener (::ffff:127.0.0.1 matches 127.0.0.0/8)', async (t) => {
    const spool = new MemorySpool();
    const listener = createSmtpListener({
      config: testIngressConfig({ host: '::', trustedNetworks: ['127.0.0.0/8'] }),
      spool,
      logger: silentLogger,
    });
    try {
      await listener.listen();
    } catch {
      t.skip('no IPv6 on this machine');
      return;
    }
    const transport = nodemailer.createTransport({
      host: '127.0.0.1',
      port: listener.address().port,
      ignoreTLS: true,
    });
    try {
      const info = await transport.sendMail({
        envelope: { from: 'a@example.com', to: 'b@example.net' },
        raw: 'x\r\n',
      });
      assert.match(info.response, /^250 2\.0\.0 Ok: queued as /);
      assert.equal(spool.messages.length, 1);
    } finally {
      transport.close();
      await listener.close(1000);
    }
  });
});

describe('TrustedNetworks', () => {
  it('matches IPv4, IPv6 and IPv4-mapped IPv6 addresses against CIDR ranges', () => {
    const n = new TrustedNetworks(['127.0.0.0/8', '10.0.0.0/8', '::1/128', 'fc00::/7', '192.0.2.7']);
    assert.ok(n.contains('127.0.0.1'));
    assert.ok(n.contains('::ffff:127.0.0.1'));
    assert.ok(n.contains('::ffff:10.1.2.3'));
    assert.ok(n.contains('::1'));
    assert.ok(n.contains('fd12:3456::1'));
    assert.ok(n.contains('192.0.2.7'));
    assert.ok(!n.contains('192.0.2.8'));
    assert.ok(!n.contains('11.0.0.1'));
    assert.ok(!n.contains('::ffff:11.0.0.1'));
    assert.ok(!n.contains('2001:db8::1'));
    assert.ok(!n.contains('not-an-ip'));
    assert.ok(!n.contains(''));
    assert.ok(!new TrustedNetworks([]).contains('127.0.0.1'));
  });
});
