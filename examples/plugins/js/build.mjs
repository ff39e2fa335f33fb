// Builds app.js into a component: `node build.mjs [out.wasm]`.
//
// Calls componentize() from @bytecodealliance/componentize-js directly: the jco CLI's
// `componentize` command fails on a WIT metadata check with this toolchain. The
// package is found in $LATCHKEY_TOOLS_DIR/node/node_modules (where
// .ci/install-tools.sh puts it), else through normal node resolution.
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const tools = process.env.LATCHKEY_TOOLS_DIR;
const entry = tools
  ? pathToFileURL(
      join(tools, 'node/node_modules/@bytecodealliance/componentize-js/src/componentize.js'),
    ).href
  : '@bytecodealliance/componentize-js';
const { componentize } = await import(entry);

const out = process.argv[2] ?? 'provider.wasm';
const { component } = await componentize({
  sourcePath: 'app.js',
  witPath: '../../../wit',
  worldName: 'provider-plugin',
});
await writeFile(out, component);
console.log(`wrote ${out} (${component.length} bytes)`);
