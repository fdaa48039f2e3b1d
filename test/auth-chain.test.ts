/** SMTP_USERS and USE_APIKEY together: the first authenticator that knows the credentials wins. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import bcrypt from 'bcryptjs';
import { authenticatorChain } from '../src/auth/authenticator-chain';
import { StaticUserAuthenticator } from '../src/auth/static-users';
import { AuthUnavailableError, type Authenticator } from '../src/auth/authenticator';

const users = new StaticUserAuthenticator([{ username: 'app', bcryptHash: bcrypt.hashSync('pw', 4) }]);
const keys = (mode: 'ok' | 'down'): Authenticator => ({
  authenticate: async (_u, p) => {
    if (mode === 'down') throw new AuthUnavailableError('table unreachable');
    return p === 'KEY' ? { user: 'key-1', allowedFromDomains: ['example.com'] } : null;
  },
});

test('static user or API key, whichever matches', async () => {
  const chain = authenticatorChain([users, keys('ok')])!;
  assert.equal((await chain.authenticate('app', 'pw'))?.user, 'app');
  assert.deepEqual(await chain.authenticate('anything', 'KEY'), {
    user: 'key-1',
    allowedFromDomains: ['example.com'],
  });
  assert.equal(await chain.authenticate('app', 'wrong'), null);
});

test('unknown credentials while the key table is down: unavailable, not invalid', async () => {
  const chain = authenticatorChain([users, keys('down')])!;
  assert.equal((await chain.authenticate('app', 'pw'))?.user, 'app', 'static users still work');
  await assert.rejects(chain.authenticate('x', 'KEY'), AuthUnavailableError);
});

test('a single authenticator is used as is; none means no AUTH', () => {
  assert.equal(authenticatorChain([users]), users);
  assert.equal(authenticatorChain([]), undefined);
});
