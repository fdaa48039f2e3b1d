/**
 * The AUTH failure lockout: failed attempts counted per client network, in a bounded LRU with TTL (never an
 * unbounded map).
 *
 * It counts every failed AUTH of a client network within the window, whatever succeeds in between: a
 * success does not reset the count (else a client with one valid account could keep guessing the passwords
 * of others without end). A network is one IPv4 address or one IPv6 /64 (the smallest prefix a site gets,
 * RFC 6177; one host can pick any address in it). As Postfix's anvil, which counts per client and never
 * forgives on success (`smtpd_client_auth_rate_limit`).
 */
import ipaddr from 'ipaddr.js';
import { LRUCache } from 'lru-cache';

/** Parses a client address as smtp-server reports it (maybe `[...]`, a zone, IPv4-mapped IPv6). */
export function parseClientAddress(address: string): ipaddr.IPv4 | ipaddr.IPv6 | undefined {
  try {
    // process() turns ::ffff:a.b.c.d into the IPv4 address.
    return ipaddr.process(address.replace(/^\[|\]$/g, '').replace(/%.*$/, ''));
  } catch {
    return undefined;
  }
}

/** The unit AUTH failures are counted in: the IPv4 address, or the IPv6 /64 network. */
export function clientNetwork(address: string): string {
  const ip = parseClientAddress(address);
  if (!ip) return address;
  if (ip.kind() === 'ipv4') return ip.toString();
  return `${ipaddr.IPv6.networkAddressFromCIDR(`${ip.toString()}/64`).toString()}/64`;
}

interface FailureEntry {
  failures: number;
  /** ms since epoch until which the address is locked out; 0 when not locked. */
  lockedUntil: number;
}

export interface AuthFailureTrackerOptions {
  /** Failures within `lockoutMs` that lock the client network out. */
  maxFailures: number;
  /** Both the counting window and the lockout duration. */
  lockoutMs: number;
  /** Most client networks remembered (least recently used go first). Default 10 000. */
  maxAddresses?: number;
}

/** Counts failed AUTH attempts per client network (see clientNetwork) and locks it out after too many. */
export class AuthFailureTracker {
  private readonly cache: LRUCache<string, FailureEntry>;

  constructor(private readonly options: AuthFailureTrackerOptions) {
    this.cache = new LRUCache<string, FailureEntry>({
      max: options.maxAddresses ?? 10_000,
      ttl: Math.max(1, options.lockoutMs),
    });
  }

  isLockedOut(address: string, now = Date.now()): boolean {
    const e = this.cache.get(clientNetwork(address));
    return !!e && e.lockedUntil > now;
  }

  /** Records a failure; true when this failure locked the client network out. */
  recordFailure(address: string, now = Date.now()): boolean {
    const key = clientNetwork(address);
    const existing = this.cache.get(key);
    const entry = existing ?? { failures: 0, lockedUntil: 0 };
    entry.failures += 1;
    if (entry.failures >= this.options.maxFailures) {
      entry.lockedUntil = now + this.options.lockoutMs;
      this.cache.set(key, entry, { ttl: Math.max(1, this.options.lockoutMs) });
      return true;
    }
    // The counting window runs from the first failure; successes in between change nothing.
    this.cache.set(key, entry, { noUpdateTTL: existing !== undefined });
    return false;
  }

  /** Client networks currently remembered (for tests and metrics). */
  get size(): number {
    return this.cache.size;
  }
}
