/**
 * How queue actions reach a running relay: a Unix domain socket, `<SPOOL_DIR>/control.sock`, served by the
 * relay that holds the spool lock. The relay is the spool's only writer (spool-lock.ts), so the queue tool
 * never writes beside it: it sends the action, the relay applies it in its own group commit
 * (`SqliteSpool.act`: one transaction, messages being delivered waited for or reported busy) and answers
 * with what changed. With no relay running, the queue tool takes the spool lock itself and calls the same
 * `act` (src/cli/queue-actions.ts).
 *
 * Why a socket in the spool directory and not the metrics port: who may change the queue is then who may
 * reach the spool's directory (the socket is created 0600, in a directory owned by the relay's user) —
 * nothing listens on the network, no port or token to configure, and `docker exec relay ses-relay ...`
 * (same container, same user) just works. Why not an actions table the relay polls: the queue tool would
 * write the database beside the relay (a second writer whose stall would block the relay's commits), and
 * every action would wait for the next poll.
 *
 * Protocol: one JSON request line per connection (`{"action":"hold","ids":[...]}` or `"all":true`, optional
 * `"state"`), one JSON answer line (`{"ok":true,"result":{...}}` or `{"ok":false,"error":"..."}`).
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { z } from 'zod';
import type { Logger } from '../observability/logger';
import {
  ACTION_STATE_FILTERS,
  QUEUE_ACTIONS,
  type QueueAction,
  type QueueActionResult,
} from './spool-actions';

export const CONTROL_SOCKET = 'control.sock';
/** Longest path a Unix socket may have on Linux (sun_path is 108 bytes with its NUL). */
export const SOCKET_PATH_MAX = 107;
/** A request is at most this large (100 000 queue ids fit). */
const REQUEST_MAX = 4 * 1024 * 1024;
const REQUEST_TIMEOUT_MS = 10_000;

export const queueActionSchema = z
  .object({
    action: z.enum(QUEUE_ACTIONS),
    ids: z.array(z.string().min(1).max(200)).max(200_000).optional(),
    all: z.boolean().optional(),
    state: z.enum(ACTION_STATE_FILTERS).optional(),
  })
  .strict()
  .refine((a) => !!a.all !== !!a.ids?.length, 'name queue ids or all, not both');

export type ControlAnswer = { ok: true; result: QueueActionResult } | { ok: false; error: string };

export function controlSocketPath(spoolDir: string): string {
  return path.join(path.resolve(spoolDir), CONTROL_SOCKET);
}

export interface QueueControlOptions {
  spoolDir: string;
  act(action: QueueAction): Promise<QueueActionResult>;
  logger: Logger;
}

/** The relay's end. `start` resolves undefined (with a warning) when the socket path is too long. */
export class QueueControlServer {
  private readonly sockets = new Set<net.Socket>();

  private constructor(
    private readonly server: net.Server,
    readonly path: string,
  ) {}

  /** Listen on `<spoolDir>/control.sock` (a stale one, left by a killed relay, is replaced: we hold the lock). */
  static async start(options: QueueControlOptions): Promise<QueueControlServer | undefined> {
    const file = controlSocketPath(options.spoolDir);
    if (Buffer.byteLength(file) > SOCKET_PATH_MAX) {
      options.logger.warn(
        { event: 'queue:control-unavailable', path: file },
        `queue actions are unavailable while the relay runs: ${file} is longer than ${SOCKET_PATH_MAX} bytes (shorten SPOOL_DIR)`,
      );
      return undefined;
    }
    fs.rmSync(file, { force: true });
    const server = net.createServer();
    const control = new QueueControlServer(server, file);
    server.on('connection', (socket) => control.serve(socket, options));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(file, () => {
        server.off('error', reject);
        resolve();
      });
    });
    fs.chmodSync(file, 0o600);
    return control;
  }

  private serve(socket: net.Socket, options: QueueControlOptions): void {
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
    socket.setTimeout(REQUEST_TIMEOUT_MS, () => socket.destroy());
    let buffer = '';
    let handled = false;
    const answer = (a: ControlAnswer): void => {
      socket.end(`${JSON.stringify(a)}\n`);
    };
    socket.setEncoding('utf8');
    socket.on('error', () => socket.destroy());
    socket.on('data', (chunk: string) => {
      if (handled) return;
      buffer += chunk;
      if (buffer.length > REQUEST_MAX) {
        handled = true;
        return answer({ ok: false, error: 'request too large' });
      }
      const nl = buffer.indexOf('\n');
      if (nl < 0) return;
      handled = true;
      socket.setTimeout(0); // the action may wait for deliveries in progress
      void this.handle(buffer.slice(0, nl), options).then(answer);
    });
  }

  private async handle(line: string, options: QueueControlOptions): Promise<ControlAnswer> {
    let action: QueueAction;
    try {
      const parsed = queueActionSchema.safeParse(JSON.parse(line));
      if (!parsed.success) return { ok: false, error: parsed.error.issues.map((i) => i.message).join('; ') };
      action = parsed.data;
    } catch {
      return { ok: false, error: 'request is not JSON' };
    }
    try {
      const result = await options.act(action);
      options.logger.info(
        {
          event: 'queue:action',
          action: action.action,
          all: action.all,
          state: action.state,
          changed: result.changed.length,
          queueIds: result.changed.slice(0, 1000),
          unknown: result.unknown.length,
          busy: result.busy.length,
        },
        `queue action ${action.action}: ${result.changed.length} changed`,
      );
      return { ok: true, result };
    } catch (err) {
      options.logger.warn(
        { event: 'queue:action-failed', action: action.action, err },
        'queue action failed',
      );
      return { ok: false, error: err instanceof Error ? err.message : String(err) };
    }
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      for (const s of this.sockets) s.destroy();
    });
    fs.rmSync(this.path, { force: true });
  }
}

/** The relay did not answer on its socket: none runs (or it is starting or stopping). */
export class ControlUnavailableError extends Error {
  override name = 'ControlUnavailableError';
  constructor(
    message: string,
    readonly code?: string,
  ) {
    super(message);
  }
}

/** The queue tool's end: send `action` to the relay serving `spoolDir`. */
export function requestAction(
  spoolDir: string,
  action: QueueAction,
  timeoutMs: number,
): Promise<QueueActionResult> {
  const file = controlSocketPath(spoolDir);
  return new Promise((resolve, reject) => {
    if (Buffer.byteLength(file) > SOCKET_PATH_MAX) {
      return reject(
        new ControlUnavailableError(`${file} is longer than ${SOCKET_PATH_MAX} bytes`, 'ENAMETOOLONG'),
      );
    }
    let connected = false;
    let reply = '';
    const socket = net.connect(file);
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`the relay did not answer within ${timeoutMs} ms (the action may still be applied)`));
    }, timeoutMs);
    socket.setEncoding('utf8');
    socket.once('connect', () => {
      connected = true;
      socket.write(`${JSON.stringify(action)}\n`);
    });
    socket.on('data', (chunk: string) => (reply += chunk));
    socket.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      if (!connected) reject(new ControlUnavailableError(err.message, err.code));
      else reject(err);
    });
    socket.once('end', () => {
      clearTimeout(timer);
      try {
        const answer = JSON.parse(reply) as ControlAnswer;
        if (answer.ok) resolve(answer.result);
        else reject(new Error(answer.error));
      } catch {
        reject(new Error('the relay closed the control connection without an answer'));
      }
    });
  });
}
