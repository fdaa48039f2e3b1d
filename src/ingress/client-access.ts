/**
 * Who may do what, by client address: trusted networks (may send without AUTH) and the AUTH failure
 * lockout (bounded LRU with TTL, never an unbounded map).
 */
import ipaddr from 'ipaddr.js';
import { LRUCache } from 'lru-cache';

type Range = [ipaddr.IPv4 | ipaddr.IPv6, number];

/** CIDR matcher. IPv4-mapped IPv6 clients (`::ffff:127.0.0.1`) match IPv4 ranges. */
export class TrustedNetworks {
  private readonly ranges: Range[];

  constructor(cidrs: string[]) {
    this.ranges = cidrs.map((c) => {
      if (ipaddr.isValidCIDR(c)) return ipaddr.parseCIDR(c) as Range;
      const a = ipaddr.parse(c);
      return [a, a.kind() === 'ipv4' ? 32 : 128] as Range;
    });
  }

  get empty(): boolean {
    return this.ranges.length === 0;
  }

  contains(address: string | undefined): boolean {
    if (!address || this.ranges.length === 0) return false;
    let ip: ipaddr.IPv4 | ipaddr.IPv6;
    try {
      // process() turns ::ffff:a.b.c.d into the IPv4 address.
      ip = ipaddr.process(address.replace(/^\[|\]$/g, '').replace(/%.*$/, ''));
    } catch {
      return false;
    }
    return this.ranges.some(([net, bits]) => {
      if (net.kind() !== ip.kind()) return false;
      return ip.kind() === 'ipv4'
        ? (ip as ipaddr.IPv4).match(net as ipaddr.IPv4, bits)
        : (ip as ipaddr.IPv6).match(net as ipaddr.IPv6, bits);
    });
  }
}

interface FailureEntry {
  failures: number;
  /** ms since epoch until which the address is locked out; 0 when not locked. */
  lockedUntil: number;
}

export interface AuthFailureTrackerOptions {
  /** Failures within `lockoutMs` that lock the address out. */
  maxFailures: number;
  /** Both the counting window and the lockout duration. */
  lockoutMs: number;
  /** Most client addresses remembered (least recently used go first). Default 10 000. */
  maxAddresses?: number;
}

/** Counts failed AUTH attempts per client address and locks an address out after too many. */
export class AuthFailureTracker {
  private readonly cache: LRUCache<string, FailureEntry>;

  constructor(private readonly options: AuthFailureTrackerOptions) {
    this.cache = new LRUCache<string, FailureEntry>({
      max: options.maxAddresses ?? 10_000,
      ttl: Math.max(1, options.lockoutMs),
    });
  }

  isLockedOut(address: string, now = Date.now()): boolean {
    const e = this.cache.get(address);
    return !!e && e.lockedUntil > now;
  }

  /** Records a failure; true when this failure locked the address out. */
  recordFailure(address: string, now = Date.now()): boolean {
    const existing = this.cache.get(address);
    const entry = existing ?? { failures: 0, lockedUntil: 0 };
    entry.failures += 1;
    if (entry.failures >= this.options.maxFailures) {
      entry.lockedUntil = now + this.options.lockoutMs;
      this.cache.set(address, entry, { ttl: Math.max(1, this.options.lockoutMs) });
      return true;
    }
    // The counting window runs from the first failure.
    this.cache.set(address, entry, { noUpdateTTL: existing !== undefined });
    return false;
  }

  recordSuccess(address: string): void {
    this.cache.delete(address);
  }

  /** Addresses currently remembered (for tests and metrics). */
  get size(): number {
    return this.cache.size;
  }
}
