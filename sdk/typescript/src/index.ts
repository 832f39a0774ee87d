// tvm-client: a client of TVM's HTTP API with nothing but `fetch`.
export { Client, Sandbox } from "./client.js";
export { TvmError } from "./errors.js";
export type * from "./types.js";
