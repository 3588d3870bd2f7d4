// @ts-check
import js from "@eslint/js";
import globals from "globals";
import tseslint from "typescript-eslint";

export default tseslint.config(
  // test/fixtures/unifaas/main.js: a seed's program, vendored byte for byte (see its README.md).
  { ignores: ["dist/", "node_modules/", "test/fixtures/unifaas/main.js"] },
  js.configs.recommended,
  // Type-aware: a promise nobody awaits or catches, or one passed where a callback's result is
  // ignored, is how a failure turns into an unhandled rejection that ends the process.
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      globals: globals.node,
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_" }],
      "@typescript-eslint/consistent-type-imports": "error",
      "@typescript-eslint/no-floating-promises": [
        "error",
        // node:test reports a failing describe/it itself; a subtest (`t.test`) must still be awaited.
        {
          allowForKnownSafeCalls: [
            { from: "package", package: "node:test", name: ["describe", "it", "suite"] },
          ],
        },
      ],
      // `return promise` inside try skips its catch and finally: await it there.
      "@typescript-eslint/return-await": ["error", "error-handling-correctness-only"],
      // An AbortSignal's reason is `any` by the platform's own typing; passing it on is the point.
      "@typescript-eslint/prefer-promise-reject-errors": [
        "error",
        { allowThrowingAny: true, allowThrowingUnknown: true },
      ],
      // An `async` method with no await is how a synchronous body meets a Promise-returning
      // contract (close, destroy, fixtures) with its throws turned into rejections.
      "@typescript-eslint/require-await": "off",
    },
  },
  // Plain scripts and the examples are outside tsconfig.json: lint them without type information.
  { files: ["**/*.js", "**/*.mjs", "examples/**"], extends: [tseslint.configs.disableTypeChecked] },
);
