// Builds a JavaScript provider into a WebAssembly component:
//
//   node path/to/plugin-sdk/js/build.mjs app.js provider.wasm [--wit DIR]
//
// 1. bundles `app.js` and what it imports (this SDK, as `@latchkey/plugin-sdk`, and any
//    other package) into one ES module with rolldown, leaving the component's own
//    imports (`wasi:*`, `latchkey:*`) as they are: StarlingMonkey resolves no package
//    names and sees only files under the build's folder;
// 2. calls `componentize()` from @bytecodealliance/componentize-js on the bundle, for the
//    world `provider-plugin` of the contract in `--wit DIR` (default: the checkout's
//    `wit/`, or what `latchkey plugin wit --out DIR` wrote).
//
// The tools are found in $LATCHKEY_TOOLS_DIR/node/node_modules (where
// .ci/install-tools.sh puts them), else by normal node resolution.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));

async function load(name, file) {
  const tools = process.env.LATCHKEY_TOOLS_DIR;
  const local = tools && join(tools, 'node/node_modules', name, file);
  return import(local && existsSync(local) ? pathToFileURL(local).href : name);
}

/** Builds `source` into a component at `out`; returns its size in bytes. */
export async function build(source, out, { wit = resolve(here, '../../wit'), world = 'provider-plugin' } = {}) {
  const { rolldown } = await load('rolldown', 'dist/index.mjs');
  const { componentize } = await load('@bytecodealliance/componentize-js', 'src/componentize.js');
  const bundle = await rolldown({
    input: resolve(source),
    external: [/^wasi:/, /^latchkey:/],
    platform: 'neutral',
    resolve: { alias: { '@latchkey/plugin-sdk': join(here, 'src/index.js') } },
    logLevel: 'warn',
  });
  const { output } = await bundle.generate({ format: 'esm' });
  await bundle.close();
  const dir = await mkdtemp(join(tmpdir(), 'latchkey-js-'));
  try {
    const bundled = join(dir, 'provider.js');
    await writeFile(bundled, output[0].code);
    const { component } = await componentize({ sourcePath: bundled, witPath: resolve(wit), worldName: world });
    await writeFile(out, component);
    return component.length;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const args = process.argv.slice(2);
  const at = args.indexOf('--wit');
  const wit = at >= 0 ? args.splice(at, 2)[1] : undefined;
  const [source = 'app.js', out = 'provider.wasm'] = args;
  const size = await build(source, out, wit ? { wit } : {});
  console.log(`wrote ${out} (${size} bytes)`);
}
