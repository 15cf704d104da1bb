#!/usr/bin/env node
// milterd needs Node 24: refuse older Node with a clear message instead of a syntax error.
const major = Number(process.versions.node.split('.')[0]);
if (major < 24) {
  process.stderr.write(
    `milterd needs Node.js 24 or later (this is ${process.version}).\n` +
      'Run it through npm (npm start), or put node_modules/.bin first on PATH: the project installs Node 24 there.\n',
  );
  process.exit(1);
}
// In a checkout, run the TypeScript sources (type stripping), so an edit needs no build step.
// An installed package has no src/ (and Node would refuse to strip types under node_modules):
// it runs the JavaScript that scripts/build.ts bundled into dist/.
const { existsSync } = await import('node:fs');
const source = new URL('../src/cli/main.ts', import.meta.url);
const { main } = await import(existsSync(source) ? source.href : '../dist/cli/main.js');
await main();
