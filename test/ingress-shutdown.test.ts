/**
 * Graceful close(graceMs): a session in DATA finishes its transaction (250) and is then closed with
 * 421 4.3.2; idle sessions and new connections get 421 4.3.2 at once; after graceMs whatever is left
 * is closed by force.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { MemorySpool } from './helpers/memory-spool';
import { RawSmtpClient } from './helpers/smtp-client';
import { startTestListener } from './helpers/ingress-listener';

const SHUTDOWN = '421 4.3.2 Service shutting down, try again later';

async function startDataSession(port: number): Promise<RawSmtpClient> {
  const c = await RawSmtpClient.connect(port);
  await c.read();
  await c.command('EHLO client.test');
  assert.equal((await c.command('MAIL FROM:<a@example.com>')).code, 250);
  assert.equal((await c.command('RCPT TO:<b@example.net>')).code, 250);
  assert.equal((await c.command('DATA')).code, 354);
  c.write('Subject: in flight\r\n\r\nfirst half\r\n');
  return c;
}

describe('ingress graceful close', () => {
  it('lets a transaction in DATA finish, sends 421 4.3.2 to idle and new sessions', async () => {
    const spool = new MemorySpool();
    const { listener } = await startTestListener({}, { spool });
    const port = listener.address().port;
    const idle = await RawSmtpClient.connect(port);
    await idle.read();
    await idle.command('EHLO idle.test');
    const mid = await RawSmtpClient.connect(port);
    await mid.read();
    await mid.command('EHLO mid.test');
    assert.equal((await mid.command('MAIL FROM:<a@example.com>')).code, 250);
    const inData = await startDataSession(port);
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(listener.activeSessions(), 3);

    const closed = listener.close(5000);
    let resolved = false;
    void closed.then(() => (resolved = true));

    assert.equal((await idle.read()).text, SHUTDOWN);
    assert.ok(await idle.waitClosed());
    assert.equal((await mid.read()).text, SHUTDOWN);
    assert.ok(await mid.waitClosed());

    const late = await RawSmtpClient.connect(port);
    assert.equal((await late.read()).text, SHUTDOWN);
    assert.ok(await late.waitClosed());
    assert.equal(resolved, false, 'close() waits for the transaction in DATA');

    inData.write('second half\r\n.\r\n');
    assert.match((await inData.read()).text, /^250 2\.0\.0 Ok: queued as /);
    assert.equal((await inData.read()).text, SHUTDOWN);
    assert.ok(await inData.waitClosed());
    await closed;
    assert.equal(listener.listening, false);
    assert.equal(listener.activeSessions(), 0);
    assert.equal(spool.messages.length, 1);
    assert.equal(
      spool.messages[0].body.toString(),
      'Subject: in flight\r\n\r\nfirst half\r\nsecond half\r\n',
    );
  });

  it('closes what is left by force once graceMs has passed', async () => {
    const spool = new MemorySpool();
    const { listener } = await startTestListener({}, { spool });
    const stuck = await startDataSession(listener.address().port);
    await new Promise((r) => setTimeout(r, 50));
    const t0 = Date.now();
    await listener.close(300);
    assert.ok(Date.now() - t0 < 3000);
    assert.ok(await stuck.waitClosed(3000));
    assert.equal(spool.messages.length, 0);
    assert.equal(listener.listening, false);
  });
});
