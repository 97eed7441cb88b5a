// ESLint (flat config): typescript-eslint's recommended rules, which the tree already follows, plus a few
// that catch what review found by hand (leftover no-op statements, imports after code). Style (line
// length, quotes, indentation) is prettier's job (.prettierrc.json), not ESLint's. `npm run lint`.
import js from '@eslint/js';
import globals from 'globals';
import tseslint from 'typescript-eslint';

/**
 * Two checks of our own, for what review found by hand and no core rule catches: an import after code (it
 * reads as if it ran after that code; imports are hoisted), and `void name;`, a leftover that silenced an
 * unused-variable error instead of removing the variable (`void promise()` to drop a promise is fine).
 */
const local = {
  rules: {
    'imports-first': {
      meta: { type: 'suggestion', schema: [], messages: { late: 'import after other statements: move it up with the others' } },
      create: (context) => ({
        Program(program) {
          let code = false;
          for (const node of program.body) {
            if (node.type === 'ImportDeclaration') {
              if (code) context.report({ node, messageId: 'late' });
            } else code = true;
          }
        },
      }),
    },
    'no-void-name': {
      meta: { type: 'problem', schema: [], messages: { leftover: '`void {{name}};` does nothing: remove it (and {{name}}, if unused)' } },
      create: (context) => ({
        ExpressionStatement(node) {
          const e = node.expression;
          if (e.type === 'UnaryExpression' && e.operator === 'void' && e.argument.type === 'Identifier') {
            context.report({ node, messageId: 'leftover', data: { name: e.argument.name } });
          }
        },
      }),
    },
  },
};

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'bench/**', '.state/**', 'schema/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: { ecmaVersion: 2022, sourceType: 'module', globals: { ...globals.node } },
    plugins: { local },
    rules: {
      'local/imports-first': 'error',
      'local/no-void-name': 'error',
      // Unused names are a tsc error already (noUnusedLocals/Parameters); `_x` marks one kept on purpose.
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' }],
      'no-constant-condition': ['error', { checkLoops: false }],
      // `catch {}` that ignores an error on purpose is common in cleanup paths; an empty block elsewhere is not.
      'no-empty': ['error', { allowEmptyCatch: true }],
      eqeqeq: ['error', 'always', { null: 'ignore' }],
      'prefer-const': 'error',
      'no-var': 'error',
    },
  },
  {
    // Tests match terminal escapes (ESC, BEL) on purpose: what must or must not reach a terminal.
    files: ['test/**/*.ts'],
    rules: { 'no-control-regex': 'off' },
  },
  {
    // The browser page of the web view.
    files: ['src/ui/client/**/*.ts'],
    languageOptions: { globals: { ...globals.browser } },
  },
);
