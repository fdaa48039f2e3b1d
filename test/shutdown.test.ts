/**
 * Graceful shutdown of the relay process: on SIGTERM new sessions get 421 4.3.2, a transaction in the middle
 * of DATA finishes with 250, and the process exits 0 within SHUTDOWN_TIMEOUT; what is queued stays spooled.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { fakeSesEnv, freePort, startRelayProcess, stopRelayProcess } from './helpers/relay-process';
import { cleanupAfterAll } from './helpers/cleanup';

const cleanups = cleanupAfterAll();

/** Minimal line reader over a raw socket. */
function session(port: number) {
  const socket = net.connect(port, '127.0.0.1');
  let buf = '';
  const waiters: Array<{ re: RegExp; resolve: (s: string) => void; reject: (e: Error) => void }> = [];
  const check = () => {
    for (const w of [...waiters]) {
      const m = w.re.exec(buf);
      if (m) {
        buf = buf.slice(m.index + m[0].length);
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(m[0]);
      }
    }
  };
  socket.setEncoding('utf8');
  socket.on('data', (d: string) => {
    buf += d;
    check();
  });
  socket.on('error', () => {});
  return {
    socket,
    expect(re: RegExp, timeoutMs = 10_000) {
      return new Promise<string>((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`timeout waiting for ${re}; got: ${buf}`)),
          timeoutMs,
        );
        waiters.push({
          re,
          resolve: (s) => {
            clearTimeout(timer);
            resolve(s);
          },
          reject,
        });
        check();
      });
    },
    send(line: string) {
      socket.write(line);
    },
  };
}

test('SIGTERM: 421 to new sessions, in-flight DATA completes with 250, exit 0, queue kept', async () => {
  const deadPort = await freePort();
  const relay = await startRelayProcess({ env: { ...fakeSesEnv(deadPort), SHUTDOWN_TIMEOUT: '8s' } });
  cleanups.push(() => stopRelayProcess(relay));

  const s = session(relay.smtpPort);
  await s.expect(/^220 .*\r\n/m);
  s.send('EHLO client.test\r\n');
  await s.expect(/250 .*\r\n(?![\s\S]*250-)/);
  s.send('MAIL FROM:<a@example.com>\r\n');
  await s.expect(/^250 .*\r\n/m);
  s.send('RCPT TO:<b@example.net>\r\n');
  await s.expect(/^250 .*\r\n/m);
  s.send('DATA\r\n');
  await s.expect(/^354 .*\r\n/m);
  s.send('Subject: in flight\r\n\r\nfirst half\r\n');

  const started = Date.now();
  relay.kill('SIGTERM');
  await relay.waitForLog((l) => l.event === 'relay:stopping');

  const late = session(relay.smtpPort);
  const greeting = await late.expect(/^(421|220)[ -].*\r\n/m).catch((e: Error) => e.message);
  assert.match(String(greeting), /^421 /, 'new sessions are refused with 421 while draining');
  late.socket.destroy();

  s.send('second half\r\n.\r\n');
  const reply = await s.expect(/^\d{3} .*\r\n/m);
  assert.match(reply, /^250 2\.0\.0 Ok: queued as /);
  s.send('QUIT\r\n');

  const code = await relay.exited;
  assert.equal(code, 0);
  assert.ok(Date.now() - started < 12_000, 'exits within the shutdown bound');
  const stopped = relay.logs.find((l) => l.event === 'relay:stopped');
  assert.ok(stopped);
  assert.equal(stopped.queued, 1, 'the message stays queued in the spool');
});
