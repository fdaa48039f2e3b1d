/**
 * Watching a relay child process from the outside while a test attacks it: /healthz polled every 250 ms with
 * the pid checked, and memory (RSS and heap used as /metrics reports them) after a forced full GC — the
 * child must have been started with `gcPreloadEnv()` (see relay-gc-preload.js).
 */
import path from 'node:path';
import { metricValue, type RelayProcess } from './relay-process';

export interface RelayMemory {
  rss: number;
  heap: number;
}

/** Environment that preloads relay-gc-preload.js into the relay (SIGUSR2 = full GC). */
export function gcPreloadEnv(): Record<string, string> {
  return { NODE_OPTIONS: `--require ${path.join(__dirname, 'relay-gc-preload.js')}` };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Two full GCs in the relay, then ses_relay_process_resident_memory_bytes and ..._heap_size_used_bytes. */
export async function memoryAfterGc(relay: RelayProcess): Promise<RelayMemory> {
  for (let i = 0; i < 2; i++) {
    const before = relay.stderr().split('relay-gc:').length;
    relay.child.kill('SIGUSR2');
    const deadline = Date.now() + 10_000;
    while (relay.stderr().split('relay-gc:').length === before && Date.now() < deadline) await sleep(20);
    if (Date.now() >= deadline)
      throw new Error('the relay did not answer SIGUSR2: started without gcPreloadEnv()?');
    await sleep(200);
  }
  const m = await relay.metrics();
  return {
    rss: metricValue(m, 'ses_relay_process_resident_memory_bytes'),
    heap: metricValue(m, 'ses_relay_nodejs_heap_size_used_bytes'),
  };
}

export interface HealthWatch {
  /** Stops polling; the number of checks made and every failure seen. */
  stop(): Promise<{ checks: number; failures: string[] }>;
}

/** Polls /healthz every 250 ms (5 s timeout each) and checks the process is still the one started. */
export function watchHealth(relay: RelayProcess): HealthWatch {
  const pid = relay.child.pid;
  const failures: string[] = [];
  let checks = 0;
  let stopped = false;
  const loop = (async () => {
    while (!stopped) {
      try {
        const res = await fetch(`http://127.0.0.1:${relay.metricsPort}/healthz`, {
          signal: AbortSignal.timeout(5000),
        });
        await res.text();
        if (res.status !== 200) failures.push(`/healthz ${res.status}`);
      } catch (err) {
        failures.push(`/healthz: ${(err as Error).message}`);
      }
      checks++;
      if (relay.child.exitCode !== null || relay.child.signalCode !== null || relay.child.pid !== pid)
        failures.push(`relay exited (${relay.child.exitCode ?? relay.child.signalCode})`);
      await sleep(250);
    }
  })();
  return {
    stop: async () => {
      stopped = true;
      await loop;
      return { checks, failures };
    },
  };
}
