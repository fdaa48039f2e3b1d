/**
 * Who may send without AUTH, by client address: SMTP_TRUSTED_NETWORKS (CIDR ranges). The AUTH failure
 * lockout is in src/auth/auth-failures.ts.
 */
import ipaddr from 'ipaddr.js';
import { parseClientAddress } from '../auth/auth-failures';

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
    const ip = parseClientAddress(address);
    if (!ip) return false;
    return this.ranges.some(([net, bits]) => {
      if (net.kind() !== ip.kind()) return false;
      return ip.kind() === 'ipv4'
        ? (ip as ipaddr.IPv4).match(net as ipaddr.IPv4, bits)
        : (ip as ipaddr.IPv6).match(net as ipaddr.IPv6, bits);
    });
  }
}
