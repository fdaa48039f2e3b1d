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

export async function startBenchRelay(env: Record<string, string>): Promise<RelayProcess> {
  const spoolDir = tempDir('ses-relay-bench-');
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

/** SIGTERM (graceful), SIGKILL after 15 s, then remove the spool. */
export async function stopBenchRelay(relay: RelayProcess): Promise<void> {
  await stopRelayProcess(relay);
  fs.rmSync(relay.spoolDir, { recursive: true, force: true });
  forgetters.get(relay)?.();
}
