/**
 * Ingress happy path: nodemailer -> listener -> real SqliteSpool; 250 with the queue id only after
 * the spool stored the message; body byte-exact; one log line per accepted message; metrics.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import nodemailer from 'nodemailer';
import { createLogger } from '../src/observability/logger';
import { registry } from '../src/observability/metrics';
import { createSmtpListener, type SmtpListener } from '../src/ingress/smtp-listener';
import { SqliteSpool } from '../src/spool/sqlite-spool';
import { MemorySpool } from './helpers/memory-spool';
import { RawSmtpClient, testIngressConfig } from './helpers/smtp-client';
import { startTestListener } from './helpers/ingress-listener';

async function readAll(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(Buffer.from(c as Buffer));
  return Buffer.concat(chunks);
}

async function metricValue(name: string): Promise<number> {
  const m = (await registry.getMetricsAsJSON()).find((x) => x.name === name);
  return (m?.values ?? []).reduce((s, v) => s + Number(v.value), 0);
}

describe('ingress: accepting mail into the real SqliteSpool', () => {
  let dir: string;
  let spool: SqliteSpool;
  let listener: SmtpListener;

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ingress-accept-'));
    spool = await SqliteSpool.open({ dir });
    ({ listener } = await startTestListener({}, { spool }));
  });
  after(async () => {
    await listener.close(1000);
    await spool.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('answers 250 2.0.0 with the queue id and stores the body byte-exact', async () => {
    const raw = Buffer.from(
      'From: app@example.com\r\nTo: a@example.net\r\nSubject: hi\r\n\r\nline one\r\n.leading dot\r\nü 8bit\r\n',
    );
    const transport = nodemailer.createTransport({
      host: '127.0.0.1',
      port: listener.address().port,
      secure: false,
      ignoreTLS: true,
    });
    try {
      const info = await transport.sendMail({
        envelope: { from: 'app@example.com', to: ['a@example.net', 'B@Example.NET'] },
        raw,
      });
      const m = /^250 2\.0\.0 Ok: queued as (\S+)$/.exec(info.response);
      assert.ok(m, info.response);
      const id = m[1];
      const stored = await readAll(spool.openBody(id));
      assert.equal(stored.toString('latin1'), raw.toString('latin1'));
      const counts = spool.counts();
      assert.equal(counts.pending, 1);
      assert.equal(counts.pendingRecipients, 2);
    } finally {
      transport.close();
    }
  });

  it('greets with the server name and ses-email-service, advertises SIZE and no AUTH without users', async () => {
    const c = await RawSmtpClient.connect(listener.address().port);
    try {
      const greeting = await c.read();
      assert.equal(greeting.code, 220);
      assert.match(greeting.text, /^220 relay\.test ESMTP ses-email-service/);
      const ehlo = await c.command('EHLO client.test');
      assert.equal(ehlo.code, 250);
      assert.ok(
        ehlo.lines.some((l) => l === `250-SIZE ${10 * 1024 * 1024}` || l === `250 SIZE ${10 * 1024 * 1024}`),
        ehlo.text,
      );
      assert.ok(!ehlo.lines.some((l) => /AUTH/.test(l)), ehlo.text);
      assert.ok(!ehlo.lines.some((l) => /STARTTLS/.test(l)), ehlo.text);
      assert.ok(
        ehlo.lines.some((l) => /ENHANCEDSTATUSCODES/.test(l)),
        ehlo.text,
      );
      assert.equal((await c.command('QUIT')).code, 221);
    } finally {
      c.close();
    }
  });
});

describe('ingress: log line and metrics per accepted message', () => {
  it('logs message:accepted without the body and counts messages, recipients and bytes', async () => {
    const lines: Record<string, unknown>[] = [];
    const dest = new Writable({
      write(chunk: Buffer, _e, cb) {
        for (const l of chunk.toString().split('\n').filter(Boolean))
          lines.push(JSON.parse(l) as Record<string, unknown>);
        cb();
      },
    });
    const logger = createLogger('info', dest);
    const spool = new MemorySpool();
    const listener = createSmtpListener({ config: testIngressConfig(), spool, logger });
    await listener.listen();
    const before = {
      messages: await metricValue('ses_relay_messages_received_total'),
      rcpts: await metricValue('ses_relay_recipients_received_total'),
      bytes: await metricValue('ses_relay_received_bytes_total'),
    };
    const transport = nodemailer.createTransport({
      host: '127.0.0.1',
      port: listener.address().port,
      ignoreTLS: true,
    });
    try {
      const body = 'Subject: secret\r\n\r\nTOP-SECRET-BODY\r\n';
      const info = await transport.sendMail({
        envelope: { from: '', to: ['x@example.org', 'y@example.org'] },
        raw: body,
      });
      const id = /queued as (\S+)/.exec(info.response)?.[1];
      const entry = lines.find((l) => l.event === 'message:accepted');
      assert.ok(entry, JSON.stringify(lines));
      assert.equal(entry.queueId, id);
      assert.equal(entry.from, '');
      assert.equal(entry.rcpts, 2);
      assert.equal(entry.size, Buffer.byteLength(body));
      assert.equal(entry.client, '127.0.0.1');
      assert.ok(!JSON.stringify(lines).includes('TOP-SECRET-BODY'));
      assert.equal(spool.messages[0].envelope.mailFrom, '');
      assert.equal((await metricValue('ses_relay_messages_received_total')) - before.messages, 1);
      assert.equal((await metricValue('ses_relay_recipients_received_total')) - before.rcpts, 2);
      assert.equal(
        (await metricValue('ses_relay_received_bytes_total')) - before.bytes,
        Buffer.byteLength(body),
      );
    } finally {
      transport.close();
      await listener.close(1000);
    }
  });
});

describe('ingress sessions gauge', () => {
  it('counts open sessions in ses_relay_smtp_sessions', async () => {
    const { listener } = await startTestListener();
    const base = await metricValue('ses_relay_smtp_sessions');
    const c = await RawSmtpClient.connect(listener.address().port);
    try {
      await c.read();
      assert.equal((await metricValue('ses_relay_smtp_sessions')) - base, 1);
      assert.equal(listener.activeSessions(), 1);
      await c.command('QUIT');
      assert.ok(await c.waitClosed());
      const deadline = Date.now() + 3000;
      while ((await metricValue('ses_relay_smtp_sessions')) !== base && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.equal(await metricValue('ses_relay_smtp_sessions'), base);
    } finally {
      c.close();
      await listener.close(1000);
    }
  });
});
