/**
 * Ingress TLS: implicit TLS (ENABLE_SSL) from the first byte, and STARTTLS.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import bcrypt from 'bcryptjs';
import nodemailer from 'nodemailer';
import { silentLogger } from '../src/observability/logger';
import { createSmtpListener } from '../src/ingress/smtp-listener';
import { MemorySpool } from './helpers/memory-spool';
import { RawSmtpClient, testIngressConfig, testTls } from './helpers/smtp-client';
import { startTestListener } from './helpers/ingress-listener';

const tlsFiles = testTls();
const users = [{ username: 'alice', bcryptHash: bcrypt.hashSync('s3cret', 4) }];

describe('ingress implicit TLS', () => {
  it('speaks TLS from the first byte, offers AUTH (no STARTTLS) and accepts mail from nodemailer', async () => {
    const spool = new MemorySpool();
    const listener = createSmtpListener({
      config: testIngressConfig({ implicitTls: true, tls: tlsFiles, users, trustedNetworks: [] }),
      spool,
      logger: silentLogger,
      authFailureDelayMs: 10,
    });
    await listener.listen();
    const port = listener.address().port;
    try {
      const c = await RawSmtpClient.connect(port, { tls: { ca: tlsFiles.ca, servername: 'localhost' } });
      assert.match((await c.read()).text, /^220 relay\.test ESMTP ses-email-service/);
      const ehlo = await c.command('EHLO client.test');
      assert.ok(
        ehlo.lines.some((l) => /AUTH PLAIN LOGIN/.test(l)),
        ehlo.text,
      );
      assert.ok(!ehlo.lines.some((l) => l.includes('STARTTLS')), ehlo.text);
      c.close();

      const transport = nodemailer.createTransport({
        host: '127.0.0.1',
        port,
        secure: true,
        tls: { ca: tlsFiles.ca, servername: 'localhost' },
        auth: { user: 'alice', pass: 's3cret' },
      });
      try {
        const info = await transport.sendMail({
          envelope: { from: 'a@example.com', to: 'b@example.net' },
          raw: 'Subject: tls\r\n\r\nover implicit TLS\r\n',
        });
        assert.match(info.response, /^250 2\.0\.0 Ok: queued as /);
        assert.equal(spool.messages.length, 1);
        assert.equal(spool.messages[0].reception.authUser, 'alice');
      } finally {
        transport.close();
      }

      // A plaintext client gets no SMTP greeting from an implicit TLS port.
      const p = await RawSmtpClient.connect(port);
      p.write('EHLO plain.test\r\n');
      await assert.rejects(p.read(2000));
      p.close();
    } finally {
      await listener.close(1000);
    }
  });
});

describe('ingress STARTTLS', () => {
  it('upgrades with STARTTLS, forgets the pre-TLS EHLO and accepts mail', async () => {
    const { listener } = await startTestListener({ tls: tlsFiles });
    try {
      const transport = nodemailer.createTransport({
        host: '127.0.0.1',
        port: listener.address().port,
        requireTLS: true,
        tls: { ca: tlsFiles.ca, servername: 'localhost' },
      });
      try {
        const info = await transport.sendMail({
          envelope: { from: 'a@example.com', to: 'b@example.net' },
          raw: 'x\r\n',
        });
        assert.match(info.response, /^250 2\.0\.0 Ok: queued as /);
      } finally {
        transport.close();
      }
      const c = await RawSmtpClient.connect(listener.address().port);
      await c.read();
      await c.command('EHLO client.test');
      assert.equal((await c.command('STARTTLS')).code, 220);
      await c.startTls({ ca: tlsFiles.ca, servername: 'localhost' });
      assert.equal((await c.command('MAIL FROM:<a@example.com>')).code, 503); // EHLO again first
      assert.equal((await c.command('EHLO client.test')).code, 250);
      assert.equal((await c.command('MAIL FROM:<a@example.com>')).code, 250);
      c.close();
    } finally {
      await listener.close(1000);
    }
  });
});
