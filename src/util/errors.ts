/** Stable error codes; scripts may match on them. */
export type ErrorCode =
  | 'E_CONFIG'
  | 'E_USAGE'
  | 'E_PORT_IN_USE'
  | 'E_CONTROL_PLANE'
  | 'E_LAUNCH'
  | 'E_NODE'
  | 'E_NOT_RUNNING'
  | 'E_ALREADY_RUNNING'
  | 'E_TIMEOUT'
  | 'E_INTERNAL';

/** Exit codes of the CLI: 2 for anything the user must fix in their input, 1 for runtime failures. */
export const EXIT_OK = 0;
export const EXIT_RUNTIME = 1;
export const EXIT_USAGE = 2;

export class DynsupError extends Error {
  readonly code: ErrorCode;
  readonly exitCode: number;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown; exitCode?: number }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'DynsupError';
    this.code = code;
    this.exitCode = options?.exitCode ?? (code === 'E_CONFIG' || code === 'E_USAGE' ? EXIT_USAGE : EXIT_RUNTIME);
  }
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
