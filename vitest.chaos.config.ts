import { defineConfig } from 'vitest/config';

// `npm run chaos`: the fault-injection run, kept out of `npm test` (it takes minutes).
export default defineConfig({
  test: {
    include: ['test/chaos/**/*.test.ts'],
    fileParallelism: false,
    testTimeout: 14 * 60_000,
    hookTimeout: 120_000,
  },
});
