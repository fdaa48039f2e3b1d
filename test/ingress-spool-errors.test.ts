/**
 * Ingress when the spool fails: 452 4.3.1, nothing kept, the session goes on; a client that
 * disconnects mid-DATA leaves nothing behind.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import nodemailer from 'nodemailer';

import { SpoolWriteError } from '../src/spool/spool';
import { SqliteSpool } from '../src/spool/sqlite-spool';
import { MemorySpool } from './helpers/memory-spool';
import { RawSmtpClient } from './helpers/smtp-client';
import { startTestListener } from './helpers/ingress-listener';

async function sendRaw(c: RawSmtpClient, body: string): Promise<string> {
  assert.equal((await c.command('MAIL FROM:<a@example.com>')).code, 250);
  assert.equal((await c.command('RCPT TO:<b@example.net>')).code, 250);
  assert.equal((await c.command('DATA')).code, 354);
  c.write(`${body}\r\n.\r\n`);
  return (await c.read()).text;
}

describe('ingress spool failures', () => {
  it('answers 452 4.3.1 when the real SqliteSpool cannot store (closed), and nothing is acknowledged', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ingress-spool-err-'));
    const spool = await SqliteSpool.open({ dir });
    const { listener } = await startTestListener({}, { spool });
    const transport = nodemailer.createTransport({
      host: '127.0.0.1',
      port: listener.address().port,
      ignoreTLS: true,
    });
    try {
      const ok = await transport.sendMail({
        envelope: { from: 'a@example.com', to: 'b@example.net' },
        raw: 'one\r\n',
      });
      assert.match(ok.response, /^250 /);
      await spool.close();
      await assert.rejects(
        transport.sendMail({ envelope: { from: 'a@example.com', to: 'b@example.net' }, raw: 'two\r\n' }),
        (err: { responseCode?: number; response?: string }) =>
          err.responseCode === 452 &&
          err.response === '452 4.3.1 Insufficient system storage, try again later',
      );
      const reopened = await SqliteSpool.open({ dir });
      assert.equal(reopened.counts().pending, 1);
      await reopened.close();
    } finally {
      transport.close();
      await listener.close(1000);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('answers 452 4.3.1 for SpoolWriteError and unexpected errors; the session goes on', async () => {
    const spool = new MemorySpool();
    const { listener } = await startTestListener({}, { spool });
    const c = await RawSmtpClient.connect(listener.address().port);
    try {
      await c.read();
      await c.command('EHLO client.test');
      spool.failWith = new SpoolWriteError('disk full');
      assert.equal(await sendRaw(c, 'x'), '452 4.3.1 Insufficient system storage, try again later');
      spool.failWith = new Error('bug');
      assert.equal(await sendRaw(c, 'x'), '452 4.3.1 Insufficient system storage, try again later');
      spool.failWith = undefined;
      assert.match(await sendRaw(c, 'x'), /^250 2\.0\.0 Ok: queued as /);
      assert.equal(spool.messages.length, 1);
    } finally {
      c.close();
      await listener.close(1000);
    }
  });

  it('keeps nothing when the client disconnects mid-DATA, and keeps serving others', async () => {
    const spool = new MemorySpool();
    const { listener } = await startTestListener({}, { spool });
    try {
      const c = await RawSmtpClient.connect(listener.address().port);
      await c.read();
      await c.command('EHLO client.test');
      await c.command('MAIL FROM:<a@example.com>');
      await c.command('RCPT TO:<b@example.net>');
      assert.equal((await c.command('DATA')).code, 354);
      c.write('partial body\r\nmore');
      await new Promise((r) => setTimeout(r, 50));
      c.close();
      const deadline = Date.now() + 3000;
      while (spool.failedStores === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      assert.equal(spool.failedStores, 1);
      assert.equal(spool.messages.length, 0);
      const d = await RawSmtpClient.connect(listener.address().port);
      await d.read();
      await d.command('EHLO client.test');
      assert.match(await sendRaw(d, 'ok'), /^250 /);
      d.close();
    } finally {
      await listener.close(1000);
    }
  });
});
