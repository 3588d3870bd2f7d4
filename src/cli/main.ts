#!/usr/bin/env node
import { commands } from "./commands.js";

const USAGE = `fennec: a Function-as-a-Service platform (WebAssembly, containers, microVMs, unikernels)

Usage: fennec <command> [options]      fennec <command> --help for a command's options

Commands:
${Object.entries(commands)
  .map(([name, c]) => `  ${name.padEnd(8)} ${c.summary}`)
  .join("\n")}

Quick start:
  fennec serve -r examples/registry          # serve the bundled examples on 127.0.0.1:8123
  fennec invoke hello                        # -> Hello from Fennec (WebAssembly)!
  fennec invoke echo -d 'hi there'           # -> hi there
`;

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === "--help" || name === "-h" || name === "help") {
    process.stdout.write(USAGE);
    return name ? 0 : 1;
  }
  const command = commands[name];
  if (!command) {
    process.stderr.write(`fennec: unknown command ${JSON.stringify(name)}\n\n${USAGE}`);
    return 2;
  }
  return command.run(rest);
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`fennec: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  },
);
