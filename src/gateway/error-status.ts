import type { ErrorCode } from "../core/errors.js";

/** The one place an error code becomes an HTTP status. */
export const STATUS_BY_CODE: Record<ErrorCode, number> = {
  BAD_REQUEST: 400,
  BAD_NAME: 400,
  BODY_TOO_LARGE: 413,
  UNAUTHORIZED: 401,
  CROSS_SITE_REFUSED: 403,
  HOST_NOT_ALLOWED: 403,
  UNSUPPORTED_MEDIA_TYPE: 415,
  NOT_FOUND: 404,
  METHOD_NOT_ALLOWED: 405,
  FUNCTION_NOT_FOUND: 404,
  CONFIG_INVALID: 422,
  MODULE_INVALID: 422,
  // Nobody is left to receive it (nginx's "client closed request"); it shows in records and logs.
  CLIENT_GONE: 499,
  QUEUE_FULL: 429,
  QUEUE_TIMEOUT: 503,
  NO_CAPACITY: 503,
  SHUTTING_DOWN: 503,
  SANDBOX_START_FAILED: 500,
  INSTANCE_GONE: 503,
  // The request is sound but this node does not run that sandbox kind (e.g. [process] without
  // --process): a conflict with the node's configuration that the caller (or operator) resolves,
  // not a server fault to retry; a deploy is refused with it before anything is written.
  DRIVER_UNAVAILABLE: 409,
  BACKEND_DOWN: 503,
  INTERNAL: 500,
  CALL_NOT_FOUND: 404,
  CALL_STATE: 409,
  // WebDAV's Insufficient Storage: the request was sound, the server cannot keep it now.
  STORE_FULL: 507,
  STORE_CORRUPT: 500,
  STORE_UNAVAILABLE: 503,
  // The platform could not run it in time: a gateway timeout, as FN_INIT_TIMEOUT is.
  CALL_EXPIRED: 504,
  CALLBACK_NOT_ALLOWED: 400,
  // Loop Detected: a chain past its depth limit is most often a cycle.
  CHAIN_TOO_DEEP: 508,
  CHAIN_OTHER_USER: 403,
  CHAIN_NO_CAPACITY: 503,
  STATE_TOO_LARGE: 413,
  CLUSTER_UNREACHABLE: 503,
  CLUSTER_REPLICAS: 503,
  // A start-up error, as CLUSTER_UNREACHABLE; not the caller's (never answered to one).
  CLUSTER_AUTH: 503,
  ARTEFACT_INVALID: 422,
  NODE_NAME_TAKEN: 409,
  // The call may have run on the lost node: a bad gateway, not a timeout, and not retried by Fennec.
  NODE_LOST: 502,
  // The request claims to come from a cluster member and cannot prove it: forbidden, not retried.
  FORWARD_UNAUTHENTICATED: 403,
  // As DRIVER_UNAVAILABLE on one node: the cluster's configuration, not a fault to retry.
  NO_NODE_FOR_SANDBOX: 409,
  FN_CONFIG_INVALID: 500,
  FN_BAD_MODULE: 500,
  FN_INIT_TIMEOUT: 504,
  FN_TIMEOUT: 504,
  FN_TRAP: 502,
  FN_EXIT: 502,
  FN_OOM: 502,
  FN_CRASHED: 502,
  FN_BAD_RESPONSE: 502,
  FN_RESPONSE_TOO_LARGE: 502,
  FN_RETRYABLE_STATUS: 502,
};
