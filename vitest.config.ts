import { defineConfig } from 'vitest/config';

// Two projects: `unit` runs anywhere; `e2e` needs root, /dev/net/tun and
// network namespaces, and runs its files one at a time (they create
// namespaces and TUN devices, and time-sensitive flows share 2 cores).
export default defineConfig({
  test: {
    projects: [
      {
        test: {
          name: 'unit',
          include: ['test/unit/**/*.test.ts'],
          testTimeout: 20_000,
        },
      },
      {
        test: {
          name: 'e2e',
          include: ['test/e2e/**/*.test.ts'],
          testTimeout: 120_000,
          hookTimeout: 120_000,
          fileParallelism: false,
          globalSetup: ['test/e2e/globalSetup.ts'],
        },
      },
    ],
  },
});
