/**
 * Who may AUTH. Static users (bcrypt hashes from SMTP_USERS) and API keys (DynamoDB, USE_APIKEY)
 * implement this; the SMTP listener only asks it.
 */
import { createHash } from 'node:crypto';
import type { Tenant } from '../types';

/**
 * What logs show of a user name that is not authenticated (yet): the first 12 hex digits of its SHA-256.
 * Clients type API keys and passwords into the user field; a hash lets an operator correlate attempts
 * (`printf %s alice | sha256sum | cut -c1-12`) without the logs holding the value.
 */
export function userNameHash(username: string): string {
  return createHash('sha256').update(username, 'utf8').digest('hex').slice(0, 12);
}

export class AuthUnavailableError extends Error {
  constructor(
    message: string,
    override readonly cause?: unknown,
  ) {
    super(message);
    this.name = 'AuthUnavailableError';
  }
}

export interface AuthenticatedUser {
  /** Name for logs (never the password or key). */
  user: string;
  /** When set, MAIL FROM must be in one of these domains (lowercase). */
  allowedFromDomains?: string[];
  /**
   * The tenant its mail belongs to (name and policy: src/auth/tenant-policy.ts). Our authenticators always
   * set it; absent (another Authenticator), the ingress uses `{ name: user, priority: 'normal' }`.
   */
  tenant?: Tenant;
}

export interface Authenticator {
  /** Null for bad credentials; rejects with AuthUnavailableError when the answer is unknown. */
  authenticate(username: string, password: string): Promise<AuthenticatedUser | null>;
}
