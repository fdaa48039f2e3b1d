/**
 * Who may AUTH. Static users (bcrypt hashes from SMTP_USERS) and API keys (DynamoDB, USE_APIKEY)
 * implement this; the SMTP listener only asks it.
 */

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
}

export interface Authenticator {
  /** Null for bad credentials; rejects with AuthUnavailableError when the answer is unknown. */
  authenticate(username: string, password: string): Promise<AuthenticatedUser | null>;
}
