/**
 * Where admission keeps its state: in the process (local-backend.ts) or in Redis, shared by every replica
 * of one LIMITER_ID (redis-backend.ts). Both evaluate the one rate formula (rate-state.ts, and its Lua
 * twin redis-rate-script.ts) and keep the delivery pause; admission.ts decides what to ask them.
 */
import type { Reaction } from './rate-state';

/** Why all delivery is paused: the signals of src/egress/transport/transport.ts. */
export const PAUSE_REASONS = ['daily-quota-exceeded', 'sending-paused'] as const;
export type PauseReason = (typeof PAUSE_REASONS)[number];

export const isPauseReason = (x: string): x is PauseReason =>
  (PAUSE_REASONS as readonly string[]).includes(x);

export interface DeliveryPauseState {
  reason: PauseReason;
  /** When it started (ms since epoch). */
  since: number;
}

/** What the back end last knew (cached: readable at any time without I/O). */
export interface BackendReading {
  /** Share of the configured rate allowed now (AIMD, 1 = not throttled). */
  fraction: number;
  /** Recipients in flight (every replica's, for the shared back end). */
  inFlight: number;
  pause?: DeliveryPauseState;
  /** Accepted 454 events so far. */
  events: number;
}

export interface TakeAnswer {
  /** `tenant-wait`: the tenant's own bucket (rate_limit) has no room; `waitMs` until it has. */
  status: 'granted' | 'wait' | 'paused' | 'tenant-wait';
  waitMs: number;
}

/**
 * The tenant a take is for. `rate`: its own rate_limit (recipients/s), checked with the shared rate in the
 * same take: a bucket one second deep (at least one recipient) that starts full; the dispatcher sends such
 * a tenant's mail in transactions no larger than that, so over any window of W seconds the tenant gets at
 * most rate × W + max(1, rate) recipients. `weight`: its share when several replicas' transactions wait for
 * the shared bucket (the Redis back end's weighted virtual clock; in one process the fair turn has done
 * it already). Keyed by the tenant's name (in Redis: `ses-relay:{id}:tenant:<name>`).
 */
export interface TenantShare {
  name: string;
  weight: number;
  rate?: number;
}

export interface AdmissionBackend {
  readonly kind: 'local' | 'redis';
  readonly burst: number;
  /** Recipients per second at the full rate. */
  rate: number;
  /** False while the shared store is unreachable: nothing may be admitted. */
  available(): boolean;
  /**
   * Take `n` tokens for transaction `id` (then counted in flight), or say how long to wait. With `tenant`,
   * its own bucket must have room too (checked first: `tenant-wait`), and is charged with the grant.
   */
  take(n: number, id: string, probe: boolean, tenant?: TenantShare): Promise<TakeAnswer>;
  /** Transaction `id` finished; `refund`: nothing was sent, the tokens go back. */
  finish(id: string, n: number, refund: boolean): Promise<void>;
  /** SES throttled us: the reaction (rate-state.ts) and the fraction from now on. */
  throttle(): Promise<{ reaction: Reaction; fraction: number }>;
  /** Pause all delivery (no-op when already paused); `changed` when this call started the pause. */
  pause(
    reason: PauseReason,
    probeIntervalMs: number,
  ): Promise<{ changed: boolean; state: DeliveryPauseState }>;
  /** End the pause; the ended pause when this call ended it. */
  resume(): Promise<DeliveryPauseState | undefined>;
  /** True for the one caller (across replicas) allowed to probe in this interval. */
  claimProbe(intervalMs: number): Promise<boolean>;
  /** Past pauses [since, until] (ms since epoch), for the queue age exemption. */
  pastPauses(): Array<[number, number]>;
  /** The cached reading (refreshed by every call, and polled by the shared back end). */
  reading(): BackendReading;
  /** Called when the reading changed in a way admission reacts to (pause, availability). */
  onChange(listener: () => void): void;
  setRate(rate: number): void;
  stop(): Promise<void>;
}
