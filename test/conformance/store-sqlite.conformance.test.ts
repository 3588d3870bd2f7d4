import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { InvocationStore } from "../../src/store/contract.js";
import { SqliteStore } from "../../src/store/sqlite-store.js";
import { runStoreConformance } from "./store.js";

// The embedded store on a file, as `fennec serve` runs it: every case, restarts included.
runStoreConformance("sqlite (file)", async () => {
  const dir = await mkdtemp(join(tmpdir(), "fennec-store-conf-"));
  const path = join(dir, "fennec.db");
  let current: InvocationStore = new SqliteStore(path);
  return {
    store: current,
    reopen: async () => {
      await current.close();
      current = new SqliteStore(path);
      return current;
    },
    cleanup: async () => {
      await current.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
});

// In memory: the same code without a file (what tests of other parts open).
runStoreConformance("sqlite (:memory:)", async () => {
  const store = new SqliteStore(":memory:");
  return { store, cleanup: () => store.close() };
});
