/**
 * AUTORESPONDER_REQUIRE_DKIM: the request's DKIM signatures, verified by mailauth while the request is
 * received (the body is streamed to the verifier, never kept). DNS lookups use Node's resolver unless a
 * `resolver` function is given (mailauth's own option: tests answer with their test key).
 */
import type { Readable } from 'node:stream';
import type { DNSResolver } from 'mailauth';
import { dkimVerify } from 'mailauth/lib/dkim/verify';
import type { DkimSignatureResult } from './request-rules';

export type DnsResolver = DNSResolver;

export interface DkimOutcome {
  results: DkimSignatureResult[];
  /** Addresses of the `From` header as mailauth read them. */
  headerFrom: string[];
}

/** Verifies every DKIM signature of the message streamed into `input`; never rejects. */
export async function verifyDkim(input: Readable, resolver?: DnsResolver): Promise<DkimOutcome> {
  try {
    const result = await dkimVerify(input, resolver ? { resolver } : {});
    return {
      results: (result.results ?? []).map((r) => ({
        status: { result: r.status?.result ?? 'none', aligned: r.status?.aligned },
      })),
      headerFrom: result.headerFrom ?? [],
    };
  } catch {
    input.resume();
    return { results: [], headerFrom: [] };
  }
}
