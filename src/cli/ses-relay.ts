#!/usr/bin/env node
/**
 * `ses-relay`: the operator's one command, installed on PATH in the container image (compiled JavaScript,
 * production dependencies only), e.g. `docker exec relay ses-relay queue summary`:
 *
 *   ses-relay queue <command> ...       the spool: summary, list, show, body, retry, hold, release,
 *                                       delete, bounce (src/cli/queue.ts)
 *   ses-relay blocklist <command> ...   the suppression list and API keys in DynamoDB (src/cli/blocklist.ts)
 *
 * Both read the same environment as the relay (SPOOL_DIR, DYNAMODB_TABLE, AWS_*), so inside the relay's
 * container they act on the relay's own spool and tables. Exit codes are the tools' own; 1 for usage.
 */
import { runCli as runBlocklistCli } from './blocklist';
import { runQueueCli } from './queue';

const USAGE = `usage: ses-relay <tool> <command> ...
  ses-relay queue summary | list | show ID | body ID | retry|hold|release|delete|bounce ID...|--all
  ses-relay blocklist add|remove|check|list ... | apikey add|list|disable|enable|remove ...
  ses-relay <tool> help   for the tool's own usage`;

export async function runSesRelay(argv: string[]): Promise<number> {
  const [tool, ...args] = argv;
  switch (tool) {
    case 'queue':
      return runQueueCli(args, { env: process.env, stdout: process.stdout, stderr: process.stderr });
    case 'blocklist':
      return runBlocklistCli(args, {
        env: process.env,
        out: (l) => process.stdout.write(`${l}\n`),
        err: (l) => process.stderr.write(`${l}\n`),
      });
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(`${USAGE}\n`);
      return tool === undefined ? 1 : 0;
    default:
      process.stderr.write(`ses-relay: unknown tool "${tool}"\n${USAGE}\n`);
      return 1;
  }
}

if (require.main === module) {
  runSesRelay(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      process.stderr.write(`ses-relay: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exitCode = 2;
    },
  );
}
