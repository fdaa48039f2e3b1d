/**
 * The only module that reads the environment. `loadConfig(env)` validates every variable with envalid
 * and returns a typed, nested configuration (one section per stage). A bad value throws ConfigError,
 * naming the variable; main.ts prints that as one line and exits non-zero before listening.
 *
 * Its parts, under src/config/: the variables with their defaults (specs.ts), the value formats
 * (validators.ts), the sections and their cross-variable checks (sections.ts, autoresponder-section.ts),
 * the section types (config-types.ts). Only this file applies them to an environment.
 */
import { cleanEnv, EnvMissingError } from 'envalid';
import { ConfigError } from './config/config-error';
import type { Config } from './config/config-types';
import { specs } from './config/specs';
import {
  egressSection,
  egressTransport,
  ingressSection,
  limiterSection,
  notificationsConfig,
  observabilitySection,
  policySection,
  serverName,
  spoolSection,
} from './config/sections';
import { autoresponderConfig } from './config/autoresponder-section';

export { ConfigError } from './config/config-error';
export type * from './config/config-types';

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const e = cleanEnv(env, specs, {
    reporter: ({ errors }) => {
      const [variable, err] = Object.entries(errors)[0] ?? [];
      if (!variable || !err) return;
      const problem =
        err instanceof EnvMissingError
          ? 'is required'
          : String(err.message || err).replace(/^Invalid (\w+) input: /, 'invalid $1 ');
      // Secrets are never echoed: the validators of PASSWORD/USERS variables do not include the value.
      throw new ConfigError(variable, /PASSWORD|HASH_KEY/.test(variable) ? 'is invalid' : problem);
    },
  });

  const transport = egressTransport(e);
  const notifications = notificationsConfig(e, serverName(e));
  const spool = spoolSection(e);
  return {
    ingress: ingressSection(e, transport, env.SMTP_MAX_MESSAGE_SIZE, notifications !== undefined),
    spool,
    egress: egressSection(e, transport, spool.dir),
    limiter: limiterSection(e, transport),
    policy: policySection(e),
    observability: observabilitySection(e),
    autoresponder: autoresponderConfig(e, spool.dir),
    notifications,
  };
}
