/** Promises that resolve when a condition on a changing object holds, re-checked on every change. */
export class Waiters {
  readonly #checks = new Set<() => void>();

  /** Resolve once `holds()` is true (checked now and at every `changed()`); reject when `signal` aborts. */
  until(holds: () => boolean, signal?: AbortSignal): Promise<void> {
    if (holds()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const check = (): void => {
        if (!holds()) return;
        this.#checks.delete(check);
        resolve();
      };
      this.#checks.add(check);
      signal?.addEventListener('abort', () => {
        this.#checks.delete(check);
        reject(signal.reason);
      });
    });
  }

  changed(): void {
    for (const check of [...this.#checks]) check();
  }
}
