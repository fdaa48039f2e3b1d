/**
 * Static SMTP users from SMTP_USERS (htpasswd -B format `user:$2y$...`), checked with bcryptjs.
 * An unknown user name is compared against a dummy hash of the same cost, so a wrong user name and a
 * wrong password take the same time (no user enumeration by timing).
 * Each user's tenant is its name with its SMTP_USER_POLICY_FILE policy (validated at start by config.ts).
 */
import { timingSafeEqual } from 'node:crypto';
import bcrypt from 'bcryptjs';
import type { SmtpUser } from '../config';
import type { AuthenticatedUser, Authenticator } from './authenticator';
import { tenantOf } from './tenant-policy';

function costOf(hash: string): number {
  const m = /^\$2[abxy]\$(\d{2})\$/.exec(hash);
  return m ? Number(m[1]) : 10;
}

/** bcryptjs knows $2a$/$2b$/$2y$ (the same algorithm); $2x$ (the old buggy variant) is refused. */
function comparableHash(hash: string): string | undefined {
  if (hash.startsWith('$2x$')) return undefined;
  return hash;
}

function sameString(a: string, b: string): boolean {
  const ab = Buffer.from(a);
  const bb = Buffer.from(b);
  return ab.length === bb.length && timingSafeEqual(ab, bb);
}

export class StaticUserAuthenticator implements Authenticator {
  private readonly users: SmtpUser[];
  private readonly dummyHash: string;

  constructor(users: SmtpUser[]) {
    this.users = [...users];
    const cost = users.length ? Math.max(...users.map((u) => costOf(u.bcryptHash))) : 10;
    // A hash of a random string: no password matches it; comparing costs as much as a real one.
    this.dummyHash = bcrypt.hashSync(Math.random().toString(36), Math.min(Math.max(cost, 4), 15));
  }

  async authenticate(username: string, password: string): Promise<AuthenticatedUser | null> {
    // Look at every entry (no early exit) so the position of a user in the list does not show.
    let found: SmtpUser | undefined;
    for (const u of this.users) if (sameString(u.username, username) && !found) found = u;
    const hash = (found && comparableHash(found.bcryptHash)) ?? this.dummyHash;
    let ok: boolean;
    try {
      ok = await bcrypt.compare(password, hash);
    } catch {
      ok = false;
    }
    return ok && found ? { user: found.username, tenant: tenantOf(found.username, found.policy) } : null;
  }
}
