/**
 * `@milterd/sdk/testing`: run a plugin in tests the way milterd runs it (sandbox, host services,
 * a scripted MTA dialogue). The kit lives in the daemon, so this entry point needs the `milterd`
 * package installed next to the SDK (`npm install --save-dev milterd`); it re-exports
 * `milterd/testing`. Test code only: plugins cannot import it (the bundler refuses SDK subpaths).
 * @module
 */
// @ts-ignore -- resolved in the plugin author's project, where milterd is installed
export * from 'milterd/testing';
