/**
 * Ingress AUTH: required before MAIL FROM for untrusted clients when users exist; refused over
 * plaintext (538) and accepted after STARTTLS; wrong credentials 535; lockout after N failures;
 * AuthUnavailableError 454; API-key style sender domain restriction 553 5.7.1.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import bcrypt from 'bcryptjs';
import nodemailer from 'nodemailer';
import type SMTPTransport from 'nodemailer/lib/smtp-transport';

import { AuthUnavailableError, type Authenticator } from '../src/auth/authenticator';
import { type SmtpListener, type SmtpListenerOptions } from '../src/ingress/smtp-listener';
import { AuthFailureTracker, clientNetwork } from '../src/auth/auth-failures';
import { StaticUserAuthenticator } from '../src/auth/static-users';
import { MemorySpool } from './helpers/memory-spool';
import { RawSmtpClient, testIngressConfig, testTls } from './helpers/smtp-client';
import { startTestListener } from './helpers/ingress-listener';

const tlsFiles = testTls();
const users = [{ username: 'alice', bcryptHash: bcrypt.hashSync('s3cret', 4) }];
const plain = (u: string, p: string): string => Buffer.from(`\0${u}\0${p}`).toString('base64');

async function start(
  overrides: Parameters<typeof testIngressConfig>[0] = {},
  extra: Partial<Omit<SmtpListenerOptions, 'config' | 'spool'>> = {},
): Promise<{ listener: SmtpListener; spool: MemorySpool; port: number }> {
  return startTestListener(
    { users, trustedNetworks: [], tls: tlsFiles, authMaxFailures: 3, ...overrides },
    { authFailureDelayMs: 10, ...extra },
  );
}

async function greeted(port: number): Promise<RawSmtpClient> {
  const c = await RawSmtpClient.connect(port);
  assert.equal((await c.read()).code, 220);
  return c;
}

async function startTls(c: RawSmtpClient): Promise<void> {
  assert.equal((await c.command('STARTTLS')).code, 220);
  await c.startTls({ ca: tlsFiles.ca, servername: 'localhost' });
}

describe('ingress AUTH with static users (client not trusted)', () => {
  let listener: SmtpListener;
  let spool: MemorySpool;
  let port: number;
  before(async () => ({ listener, spool, port } = await start()));
  after(() => listener.close(1000));

  it('does not advertise AUTH over plaintext, but after STARTTLS', async () => {
    const c = await greeted(port);
    try {
      const ehlo = await c.command('EHLO client.test');
      assert.ok(
        ehlo.lines.some((l) => l.includes('STARTTLS')),
        ehlo.text,
      );
      assert.ok(!ehlo.lines.some((l) => l.includes('AUTH')), ehlo.text);
      await startTls(c);
      const ehlo2 = await c.command('EHLO client.test');
      assert.ok(
        ehlo2.lines.some((l) => /AUTH PLAIN LOGIN/.test(l)),
        ehlo2.text,
      );
      assert.ok(!ehlo2.lines.some((l) => l.includes('STARTTLS')), ehlo2.text);
    } finally {
      c.close();
    }
  });

  it('requires AUTH before MAIL FROM: 530 5.7.0', async () => {
    const c = await greeted(port);
    try {
      await c.command('EHLO client.test');
      const r = await c.command('MAIL FROM:<a@example.com>');
      assert.equal(r.text, '530 5.7.0 Authentication required');
      await startTls(c);
      await c.command('EHLO client.test');
      assert.equal((await c.command('MAIL FROM:<a@example.com>')).text, '530 5.7.0 Authentication required');
    } finally {
      c.close();
    }
  });

  it('refuses AUTH over plaintext with 538 5.7.11 before reading credentials', async () => {
    const c = await greeted(port);
    try {
      await c.command('EHLO client.test');
      assert.equal(
        (await c.command('AUTH LOGIN')).text,
        '538 5.7.11 Encryption required for requested authentication mechanism',
      );
      assert.equal((await c.command(`AUTH PLAIN ${plain('alice', 's3cret')}`)).code, 538);
    } finally {
      c.close();
    }
  });

  it('nodemailer without TLS gets 530 (AUTH not offered) or 538 (forced); with STARTTLS it sends', async () => {
    const message = {
      envelope: { from: 'a@example.com', to: 'b@example.net' },
      raw: 'Subject: x\r\n\r\nx\r\n',
    };
    for (const [forceAuth, code] of [
      [false, 530],
      [true, 538],
    ] as const) {
      const insecure = nodemailer.createTransport({
        host: '127.0.0.1',
        port,
        ignoreTLS: true,
        forceAuth,
        auth: { user: 'alice', pass: 's3cret' },
      } as SMTPTransport.Options);
      try {
        await assert.rejects(
          insecure.sendMail(message),
          (err: { responseCode?: number }) => err.responseCode === code,
        );
      } finally {
        insecure.close();
      }
    }
    const secure = nodemailer.createTransport({
      host: '127.0.0.1',
      port,
      requireTLS: true,
      tls: { ca: tlsFiles.ca, servername: 'localhost' },
      auth: { user: 'alice', pass: 's3cret' },
    });
    try {
      const info = await secure.sendMail({
        envelope: { from: 'a@example.com', to: 'b@example.net' },
        raw: 'Subject: x\r\n\r\nx\r\n',
      });
      assert.match(info.response, /^250 2\.0\.0 Ok: queued as /);
      assert.equal(spool.messages.at(-1)?.reception.authUser, 'alice');
    } finally {
      secure.close();
    }
  });

  it('answers wrong credentials with 535 5.7.8 (AUTH PLAIN and AUTH LOGIN)', async () => {
    const c = await greeted(port);
    try {
      await startTls(c);
      await c.command('EHLO client.test');
      assert.equal(
        (await c.command(`AUTH PLAIN ${plain('alice', 'wrong')}`)).text,
        '535 5.7.8 Authentication credentials invalid',
      );
      assert.equal((await c.command('AUTH LOGIN')).code, 334);
      assert.equal((await c.command(Buffer.from('nobody').toString('base64'))).code, 334);
      assert.equal((await c.command(Buffer.from('x').toString('base64'))).code, 535);
      // two failures so far, under the limit of 3: the right password is still accepted
      assert.equal((await c.command(`AUTH PLAIN ${plain('alice', 's3cret')}`)).code, 235);
    } finally {
      c.close();
    }
  });
});

describe('ingress AUTH lockout', () => {
  it('locks an address out after N failures (421 4.7.0 + disconnect) until the lockout passes', async () => {
    const { listener, port } = await start({
      authMaxFailures: 3,
      authLockoutMs: 1500,
      allowInsecureAuth: true,
    });
    try {
      const c = await greeted(port);
      await c.command('EHLO client.test');
      assert.equal((await c.command(`AUTH PLAIN ${plain('alice', 'bad1')}`)).code, 535);
      assert.equal((await c.command(`AUTH PLAIN ${plain('alice', 'bad2')}`)).code, 535);
      const third = await c.command(`AUTH PLAIN ${plain('alice', 'bad3')}`);
      assert.equal(third.text, '421 4.7.0 Too many failed authentication attempts, try again later');
      assert.ok(await c.waitClosed(3000), 'connection closed after lockout');

      // A new connection from the same address: refused at AUTH, even with the right password.
      const d = await greeted(port);
      await d.command('EHLO client.test');
      assert.equal((await d.command(`AUTH PLAIN ${plain('alice', 's3cret')}`)).code, 421);
      assert.ok(await d.waitClosed(3000));

      await new Promise((r) => setTimeout(r, 1600));
      const e = await greeted(port);
      await e.command('EHLO client.test');
      assert.equal((await e.command(`AUTH PLAIN ${plain('alice', 's3cret')}`)).code, 235);
      e.close();
    } finally {
      await listener.close(1000);
    }
  });

  it('counts failures per client address whatever succeeds in between (issue 8, defect 5)', async () => {
    // Wrong guesses for alice interleaved with valid logins of bob, all from 127.0.0.1.
    const bobUsers = [...users, { username: 'bob', bcryptHash: bcrypt.hashSync('b0b', 4) }];
    const inner = new StaticUserAuthenticator(bobUsers);
    let checks = 0;
    const authenticator: Authenticator = {
      authenticate: (u, p) => {
        checks++;
        return inner.authenticate(u, p);
      },
    };
    const { listener, port } = await start(
      { users: bobUsers, authMaxFailures: 3, allowInsecureAuth: true },
      { authenticator },
    );
    const attempt = async (user: string, pass: string): Promise<number> => {
      const c = await greeted(port);
      try {
        await c.command('EHLO client.test');
        return (await c.command(`AUTH PLAIN ${plain(user, pass)}`)).code;
      } finally {
        c.close();
      }
    };
    try {
      const codes: number[] = [];
      for (let i = 0; i < 4; i++) {
        codes.push(await attempt('alice', `guess${i}`));
        codes.push(await attempt('bob', 'b0b'));
      }
      // guess, login, guess, login, third guess locks out; from then on even bob's valid login is refused
      assert.deepEqual(codes, [535, 235, 535, 235, 421, 421, 421, 421]);
      assert.equal(checks, 5, 'no password is checked while the address is locked out');
    } finally {
      await listener.close(1000);
    }
  });

  it('slows each failure down by the configured delay', async () => {
    const { listener, port } = await start({ allowInsecureAuth: true }, { authFailureDelayMs: 300 });
    try {
      const c = await greeted(port);
      await c.command('EHLO client.test');
      const t0 = Date.now();
      assert.equal((await c.command(`AUTH PLAIN ${plain('alice', 'bad')}`)).code, 535);
      assert.ok(Date.now() - t0 >= 290, 'the failure reply was delayed');
      c.close();
    } finally {
      await listener.close(1000);
    }
  });
});

describe('ingress AUTH variants', () => {
  it('with SMTP_ALLOW_INSECURE_AUTH advertises and accepts AUTH over plaintext', async () => {
    const { listener, port } = await start({ allowInsecureAuth: true, tls: undefined });
    try {
      const c = await greeted(port);
      const ehlo = await c.command('EHLO client.test');
      assert.ok(
        ehlo.lines.some((l) => /AUTH PLAIN LOGIN/.test(l)),
        ehlo.text,
      );
      assert.equal(
        (await c.command(`AUTH PLAIN ${plain('alice', 's3cret')}`)).text,
        '235 2.7.0 Authentication successful',
      );
      assert.equal((await c.command('MAIL FROM:<a@example.com>')).code, 250);
      c.close();
    } finally {
      await listener.close(1000);
    }
  });

  it('trusted clients may send without AUTH and may AUTH over plaintext', async () => {
    const { listener, port } = await start({ trustedNetworks: ['127.0.0.0/8'], tls: undefined });
    try {
      const c = await greeted(port);
      const ehlo = await c.command('EHLO client.test');
      assert.ok(
        ehlo.lines.some((l) => /AUTH PLAIN LOGIN/.test(l)),
        ehlo.text,
      );
      assert.equal((await c.command('MAIL FROM:<a@example.com>')).code, 250);
      assert.equal((await c.command('RSET')).code, 250);
      assert.equal((await c.command(`AUTH PLAIN ${plain('alice', 's3cret')}`)).code, 235);
      c.close();
    } finally {
      await listener.close(1000);
    }
  });

  it('restricts MAIL FROM to allowedFromDomains (553 5.7.1) and maps AuthUnavailableError to 454 4.7.0', async () => {
    const authenticator: Authenticator = {
      async authenticate(username, password) {
        if (username === 'down') throw new AuthUnavailableError('table unreachable');
        return password === 'key' ? { user: `key:${username}`, allowedFromDomains: ['example.com'] } : null;
      },
    };
    const { listener, spool, port } = await start(
      { users: [], allowInsecureAuth: true, tls: undefined },
      { authenticator },
    );
    try {
      const c = await greeted(port);
      const ehlo = await c.command('EHLO client.test');
      assert.ok(
        ehlo.lines.some((l) => /AUTH PLAIN LOGIN/.test(l)),
        ehlo.text,
      );
      assert.equal(
        (await c.command(`AUTH PLAIN ${plain('down', 'key')}`)).text,
        '454 4.7.0 Temporary authentication failure, try again later',
      );
      assert.equal((await c.command(`AUTH PLAIN ${plain('app', 'key')}`)).code, 235);
      assert.equal(
        (await c.command('MAIL FROM:<a@other.org>')).text,
        '553 5.7.1 Sender address not allowed for this API key',
      );
      assert.equal((await c.command('MAIL FROM:<>')).code, 553);
      assert.equal((await c.command('MAIL FROM:<a@EXAMPLE.com>')).code, 250);
      assert.equal((await c.command('RCPT TO:<b@example.net>')).code, 250);
      assert.equal((await c.command('DATA')).code, 354);
      const r = await c.command('From: a@example.com\r\nSubject: t\r\n\r\nhello\r\n.');
      assert.match(r.text, /^250 2\.0\.0 Ok: queued as /);
      assert.equal(spool.messages[0].reception.authUser, 'key:app');
      c.close();
    } finally {
      await listener.close(1000);
    }
  });
});

describe('AuthFailureTracker', () => {
  it('counts an IPv6 /64 as one client and IPv4-mapped IPv6 as the IPv4 address', () => {
    assert.equal(clientNetwork('2001:db8:1:2::1'), '2001:db8:1:2::/64');
    assert.equal(clientNetwork('[2001:db8:1:2:ffff:ffff:ffff:ffff]'), '2001:db8:1:2::/64');
    assert.equal(clientNetwork('::ffff:192.0.2.7'), '192.0.2.7');
    assert.equal(clientNetwork('fe80::1%eth0'), 'fe80::/64');

    const t = new AuthFailureTracker({ maxFailures: 3, lockoutMs: 60_000 });
    assert.equal(t.recordFailure('2001:db8:1:2::1'), false);
    assert.equal(t.recordFailure('2001:db8:1:2::2'), false);
    assert.equal(t.recordFailure('2001:db8:1:2:aaaa:bbbb:cccc:dddd'), true, 'third address of the /64 locks');
    assert.ok(t.isLockedOut('2001:db8:1:2::99'));
    assert.ok(!t.isLockedOut('2001:db8:1:3::1'), 'the next /64 is another client');
    assert.equal(t.recordFailure('192.0.2.7'), false);
    assert.equal(t.recordFailure('::ffff:192.0.2.7'), false);
    assert.equal(t.recordFailure('192.0.2.7'), true);
    assert.ok(!t.isLockedOut('192.0.2.8'), 'IPv4 counts per address');
  });
});

describe('StaticUserAuthenticator', () => {
  it('checks bcrypt hashes ($2y$ from htpasswd too) and rejects unknown users', async () => {
    const h = bcrypt.hashSync('pw', 4);
    const auth = new StaticUserAuthenticator([
      { username: 'bob', bcryptHash: h.replace(/^\$2b\$/, '$2y$') },
      { username: 'carol', bcryptHash: h },
    ]);
    assert.deepEqual(await auth.authenticate('bob', 'pw'), {
      user: 'bob',
      tenant: { name: 'bob', priority: 'normal' },
    });
    assert.deepEqual(await auth.authenticate('carol', 'pw'), {
      user: 'carol',
      tenant: { name: 'carol', priority: 'normal' },
    });
    assert.equal(await auth.authenticate('bob', 'PW'), null);
    assert.equal(await auth.authenticate('nobody', 'pw'), null);
    assert.equal(await auth.authenticate('', ''), null);
  });
});
