import { defineConfig } from 'vitest/config';

// Two projects in one run (one closing line): `unit` runs anywhere; `e2e`
// needs root, /dev/net/tun and network namespaces. groupOrder runs e2e after
// unit, and its files one at a time: they build namespaces and TUN devices
// and measure real flows on a 2-core machine.
export default defineConfig({
  test: {
    reporters: ['default', './test/reporters/ciGuard.ts'],
    projects: [
      {
        test: {
          name: 'unit',
          include: ['test/unit/**/*.test.ts'],
          testTimeout: 30_000,
          sequence: { groupOrder: 0 },
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
          sequence: { groupOrder: 1 },
        },
      },
    ],
  },
});
