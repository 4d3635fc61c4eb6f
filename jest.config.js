/** Jest runs the TypeScript specs through ts-jest (TypeScript 6; ts-jest does not support 7). */
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/spec'],
  testMatch: ['**/*.spec.ts'],
  transform: { '^.+\\.ts$': ['ts-jest', { tsconfig: 'tsconfig.json'}] },
  testTimeout: 20000,
  setupFiles: ['<rootDir>/spec/support/setup-env.ts'],
};
