#!/usr/bin/env node
// milterd runs its TypeScript sources directly (Node 24 type stripping): refuse older Node
// with a clear message instead of a syntax error.
const major = Number(process.versions.node.split('.')[0]);
if (major < 24) {
  process.stderr.write(
    `milterd needs Node.js 24 or later (this is ${process.version}).\n` +
      'Run it through npm (npm start), or put node_modules/.bin first on PATH: the project installs Node 24 there.\n',
  );
  process.exit(1);
}
const { main } = await import('../src/cli/main.ts');
await main();
