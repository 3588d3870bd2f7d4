/** The call the driver-level benchmarks make: a GET with no body, its response read to the end. */
import { bodyOf, readBody } from "../src/core/body.js";
import type { Body, InvokeRequest } from "../src/core/types.js";

/** A fresh request each time: a body is a stream, read once. */
export const request = (): InvokeRequest => ({
  method: "GET",
  path: "/",
  query: "",
  headers: { "content-length": "0" },
  body: bodyOf(),
});

/** Reads a response's body to its end. */
export const drain = (r: { body: Body }) =>
  readBody(r.body, Number.POSITIVE_INFINITY, () => new Error("unbounded"));
