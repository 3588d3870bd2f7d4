#!/usr/bin/env node
import { VERSION } from "./client.js";
import { FennecError } from "../core/errors.js";
import { commands, UsageError } from "./commands.js";

const USAGE = `fennec: a Function-as-a-Service platform (WebAssembly, containers, microVMs, unikernels)

Usage: fennec <command> [options]      fennec <command> --help for a command's options
       fennec --version

Commands:
${Object.entries(commands)
  .map(([name, c]) => `  ${name.padEnd(8)} ${c.summary}`)
  .join("\n")}

Quick start:
  fennec serve -r examples/registry          # serve the bundled examples on 127.0.0.1:8123
  fennec invoke hello                        # -> Hello from Fennec (WebAssembly)!
  fennec invoke echo -d 'hi there'           # -> hi there
`;

// Exit codes: 0 success, 1 the work failed (an HTTP error, Fennec unreachable, a port in use),
// 2 the command line is wrong.
async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === "--version" || name === "-v" || name === "version") {
    process.stdout.write(`fennec ${VERSION}\n`);
    return 0;
  }
  if (name === "--help" || name === "-h" || name === "help") {
    process.stdout.write(USAGE);
    return 0;
  }
  if (!name) {
    process.stderr.write(USAGE);
    return 2;
  }
  const command = commands[name];
  if (!command) {
    process.stderr.write(`fennec: unknown command ${JSON.stringify(name)}\n\n${USAGE}`);
    return 2;
  }
  try {
    return await command.run(rest);
  } catch (err) {
    // parseArgs reports an unknown option or a stray argument with an ERR_PARSE_ARGS_* code.
    const code = (err as { code?: unknown }).code;
    if (err instanceof UsageError || (typeof code === "string" && code.startsWith("ERR_PARSE_ARGS"))) {
      process.stderr.write(`fennec ${name}: ${(err as Error).message}\n(fennec ${name} --help)\n`);
      return 2;
    }
    throw err;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    // A FennecError's stable code leads (fennec: CLUSTER_AUTH: ...): scripts and operators match on it.
    const code = err instanceof FennecError ? `${err.code}: ` : "";
    process.stderr.write(`fennec: ${code}${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  },
);
