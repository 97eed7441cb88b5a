/** How a process ended, in the words every message uses: "exited with code 1", "killed by SIGKILL". */
export function exitText(exit: { readonly code: number | null; readonly signal: string | null }): string {
  return exit.signal ? `killed by ${exit.signal}` : `exited with code ${exit.code}`;
}
