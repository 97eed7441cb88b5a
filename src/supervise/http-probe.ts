/** Health check for workers: an HTTP GET that must answer 2xx. */
export function httpProbe(url: string): (signal: AbortSignal) => Promise<boolean> {
  return async (signal) => {
    try {
      const res = await fetch(url, { signal, redirect: 'manual' });
      await res.body?.cancel();
      return res.status >= 200 && res.status < 300;
    } catch {
      return false;
    }
  };
}
