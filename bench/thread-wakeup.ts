/**
 * The floor under any worker-thread sandbox on this host: a message round trip to a worker that
 * sleeps between messages (it must be woken) against one that polls (it need not be). On a
 * virtualised host, waking a thread on another vCPU costs an inter-processor interrupt and a VM
 * exit, which is what this shows.
 */
import { MessageChannel, Worker } from "node:worker_threads";
import { summarize } from "./stats.js";

async function measure(
  polling: boolean,
  n: number,
): Promise<{ rttUs: ReturnType<typeof summarize>; mainCpuUsPerMessage: number }> {
  const code = polling
    ? `const {receiveMessageOnPort, workerData: port} = require("node:worker_threads");
       for (;;) { const m = receiveMessageOnPort(port); if (m) port.postMessage(m.message); }`
    : `const {workerData: port} = require("node:worker_threads"); port.on("message", (m) => port.postMessage(m));`;
  const { port1, port2 } = new MessageChannel();
  const worker = new Worker(code, { eval: true, workerData: port2, transferList: [port2] });
  await new Promise((r) => worker.once("online", r));
  const lat: number[] = [];
  const cpu0 = process.cpuUsage();
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    port1.postMessage(i);
    await new Promise((r) => port1.once("message", r));
    lat.push((performance.now() - t0) * 1000);
  }
  const cpu = process.cpuUsage(cpu0);
  await worker.terminate();
  port1.close();
  return { rttUs: summarize(lat), mainCpuUsPerMessage: (cpu.user + cpu.system) / n };
}

export async function threadWakeup(
  n = 5000,
): Promise<{ sleeping: Awaited<ReturnType<typeof measure>>; polling: Awaited<ReturnType<typeof measure>> }> {
  return { sleeping: await measure(false, n), polling: await measure(true, n) };
}
