/** Whole-name glob match for the agent's unsetEnv patterns: `*` any run of characters, `?` one; everything else literal. */
export function matchesPattern(name: string, pattern: string): boolean {
  const re = new RegExp(
    `^${pattern
      .replace(/[.+^${}()|[\]\\]/g, '\\$&')
      .replace(/\*/g, '.*')
      .replace(/\?/g, '.')}$`,
  );
  return re.test(name);
}
