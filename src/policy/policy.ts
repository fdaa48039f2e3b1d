/**
 * Policy consulted between ingress/spool and egress: which recipients may be sent to. The relay core has
 * an allow-everything policy; the DynamoDB suppression list (suppression-list.ts) plugs in here.
 */

export class PolicyUnavailableError extends Error {
  constructor(
    message: string,
    override readonly cause?: unknown,
  ) {
    super(message);
    this.name = 'PolicyUnavailableError';
  }
}

export interface SuppressedRecipient {
  recipient: string;
  /** The entry that matched: the address itself or `@domain`. */
  matched: string;
  reason?: string;
}

export interface PolicyDecision {
  allowed: string[];
  suppressed: SuppressedRecipient[];
}

export interface RecipientPolicy {
  /**
   * Split recipients into allowed and suppressed. Rejects with PolicyUnavailableError when it cannot
   * decide (the caller defers the message rather than risk sending to a suppressed address).
   */
  check(recipients: string[]): Promise<PolicyDecision>;
  /** False while the backing store is unreachable (for /readyz). */
  healthy(): boolean;
  close(): Promise<void>;
}

/** The embedded default: no suppression list. */
export const allowAll: RecipientPolicy = {
  check: async (recipients) => ({ allowed: [...recipients], suppressed: [] }),
  healthy: () => true,
  close: async () => {},
};
