/**
 * The relay under benchmark: the built dist/main.js as a child process (test/helpers/relay-process.ts),
 * with its spool in a fresh temp dir that is removed afterwards, and a last-resort kill if the bench is
 * interrupted.
 */
import fs from 'node:fs';
import {
  startRelayProcess,
  stopRelayProcess,
  tempDir,
  type RelayProcess,
} from '../../test/helpers/relay-process';
import { onAbort } from './cleanup';

const forgetters = new WeakMap<RelayProcess, () => void>();

/** Start a relay; `spoolDir` reuses an existing spool (e.g. a backlog left by an earlier relay). */
export async function startBenchRelay(env: Record<string, string>, spoolDir?: string): Promise<RelayProcess> {
  spoolDir ??= tempDir('ses-relay-bench-');
  let child: RelayProcess['child'] | undefined;
  const forget = onAbort(() => {
    child?.kill('SIGKILL');
    fs.rmSync(spoolDir, { recursive: true, force: true });
  });
  try {
    const relay = await startRelayProcess({ env, spoolDir });
    child = relay.child;
    forgetters.set(relay, forget);
    return relay;
  } catch (err) {
    forget();
    fs.rmSync(spoolDir, { recursive: true, force: true });
    throw err;
  }
}

/** SIGTERM (graceful), SIGKILL after 15 s, then remove the spool (unless `keepSpool`). */
export async function stopBenchRelay(
  relay: RelayProcess,
  options: { keepSpool?: boolean } = {},
): Promise<void> {
  await stopRelayProcess(relay);
  forgetters.get(relay)?.();
  if (options.keepSpool) {
    // Still remove it if the bench is interrupted before a later relay takes it over.
    onAbort(() => fs.rmSync(relay.spoolDir, { recursive: true, force: true }));
  } else {
    fs.rmSync(relay.spoolDir, { recursive: true, force: true });
  }
}
