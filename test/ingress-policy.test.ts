/**
 * Ingress with BLOCKLIST_ACTION=reject: suppressed recipients 550 5.7.1 at RCPT TO; an unreachable
 * suppression list 451 4.3.0; without rejectSuppressed the policy is not consulted.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { silentLogger } from '../src/observability/logger';
import { registry } from '../src/observability/metrics';
import { PolicyUnavailableError, type RecipientPolicy } from '../src/policy/policy';
import { createSmtpListener } from '../src/ingress/smtp-listener';
import { MemorySpool } from './helpers/memory-spool';
import { RawSmtpClient, testIngressConfig } from './helpers/smtp-client';

function listPolicy(suppressed: string[], calls: string[][]): RecipientPolicy {
  return {
    async check(recipients) {
      calls.push(recipients);
      if (recipients.some((r) => r.endsWith('@down.example')))
        throw new PolicyUnavailableError('table unreachable');
      const hit = recipients.filter((r) => suppressed.includes(r.toLowerCase()));
      return {
        allowed: recipients.filter((r) => !hit.includes(r)),
        suppressed: hit.map((r) => ({ recipient: r, matched: r, reason: 'bounce' })),
      };
    },
    healthy: () => true,
    close: async () => {},
  };
}

async function rejectionCount(reply: string): Promise<number> {
  const m = (await registry.getMetricsAsJSON()).find((x) => x.name === 'ses_relay_smtp_rejections_total');
  return Number(m?.values.find((v) => v.labels.reply === reply)?.value ?? 0);
}

describe('ingress suppression list at RCPT TO', () => {
  it('rejects suppressed recipients (550 5.7.1) and answers 451 4.3.0 when the list is unreachable', async () => {
    const calls: string[][] = [];
    const spool = new MemorySpool();
    const listener = createSmtpListener({
      config: testIngressConfig(),
      spool,
      logger: silentLogger,
      policy: listPolicy(['bounced@example.net'], calls),
      rejectSuppressed: true,
    });
    await listener.listen();
    const before = await rejectionCount('recipientSuppressed');
    const c = await RawSmtpClient.connect(listener.address().port);
    try {
      await c.read();
      await c.command('EHLO client.test');
      assert.equal((await c.command('MAIL FROM:<a@example.com>')).code, 250);
      assert.equal(
        (await c.command('RCPT TO:<Bounced@example.net>')).text,
        '550 5.7.1 Recipient address is on the suppression list',
      );
      assert.equal(
        (await c.command('RCPT TO:<x@down.example>')).text,
        '451 4.3.0 Suppression list temporarily unavailable, try again later',
      );
      assert.equal((await c.command('RCPT TO:<ok@example.net>')).code, 250);
      assert.equal((await c.command('DATA')).code, 354);
      assert.equal((await c.command('x\r\n.')).code, 250);
      assert.deepEqual(spool.messages[0].envelope.recipients, ['ok@example.net']);
      assert.equal((await rejectionCount('recipientSuppressed')) - before, 1);
    } finally {
      c.close();
      await listener.close(1000);
    }
  });

  it('does not consult the policy without rejectSuppressed', async () => {
    const calls: string[][] = [];
    const listener = createSmtpListener({
      config: testIngressConfig(),
      spool: new MemorySpool(),
      logger: silentLogger,
      policy: listPolicy(['bounced@example.net'], calls),
    });
    await listener.listen();
    const c = await RawSmtpClient.connect(listener.address().port);
    try {
      await c.read();
      await c.command('EHLO client.test');
      await c.command('MAIL FROM:<a@example.com>');
      assert.equal((await c.command('RCPT TO:<bounced@example.net>')).code, 250);
      assert.equal(calls.length, 0);
    } finally {
      c.close();
      await listener.close(1000);
    }
  });
});
