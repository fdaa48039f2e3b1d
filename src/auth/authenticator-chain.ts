/**
 * Several ways to AUTH at once (SMTP_USERS and USE_APIKEY): the first authenticator that recognises the
 * credentials wins. If none does and one of them could not answer, the answer is "unknown"
 * (AuthUnavailableError → 454 4.7.0) rather than "wrong credentials".
 */
import { AuthUnavailableError, type AuthenticatedUser, type Authenticator } from './authenticator';

export function authenticatorChain(chain: Authenticator[]): Authenticator | undefined {
  if (chain.length <= 1) return chain[0];
  return {
    async authenticate(username: string, password: string): Promise<AuthenticatedUser | null> {
      let unavailable: unknown;
      for (const a of chain) {
        try {
          const user = await a.authenticate(username, password);
          if (user) return user;
        } catch (err) {
          if (!(err instanceof AuthUnavailableError)) throw err;
          unavailable = err;
        }
      }
      if (unavailable) throw unavailable;
      return null;
    },
  };
}
