// Native boundary, shared by every addon function: no napi_status is ignored. A failed call throws
// (unless an exception is already pending) and the function returns, so JS never sees a half-built value.
#ifndef TRELLIS_CHECKS_H
#define TRELLIS_CHECKS_H

#include <stdbool.h>
#include <stddef.h>
#include <node_api.h>

// The last error info must be read before any other N-API call overwrites it.
static inline void trellis_throw_last_status(napi_env env) {
  const napi_extended_error_info *info = NULL;
  const char *message = "N-API call failed";
  if (napi_get_last_error_info(env, &info) == napi_ok && info != NULL && info->error_message != NULL) {
    message = info->error_message;
  }
  bool pending = false;
  if (napi_is_exception_pending(env, &pending) == napi_ok && pending) return;
  napi_throw_error(env, "ENAPI", message);
}

#define NAPI_CALL_RETURN(env, call, ret)   \
  do {                                     \
    if ((call) != napi_ok) {               \
      trellis_throw_last_status(env);      \
      return ret;                          \
    }                                      \
  } while (0)

/** For functions returning napi_value: throws and returns NULL on failure. */
#define NAPI_CALL(env, call) NAPI_CALL_RETURN(env, call, NULL)

/** For helpers returning bool: throws and returns false on failure. */
#define NAPI_CALL_BOOL(env, call) NAPI_CALL_RETURN(env, call, false)

/** Declares `argv` with exactly `n` arguments; throws a TypeError when fewer were passed. */
#define NAPI_ARGV(env, info, n, fn)                                                \
  size_t argc = (n);                                                               \
  napi_value argv[(n)];                                                            \
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));            \
  if (argc < (size_t)(n)) {                                                        \
    napi_throw_type_error(env, "EINVAL", fn ": expected " #n " arguments");        \
    return NULL;                                                                   \
  }

/** Adds a function property to `exports`. */
#define NAPI_EXPORT_FUNCTION(env, exports, name, fn)                                      \
  do {                                                                                    \
    napi_value fn_value_;                                                                 \
    NAPI_CALL(env, napi_create_function(env, name, NAPI_AUTO_LENGTH, fn, NULL, &fn_value_)); \
    NAPI_CALL(env, napi_set_named_property(env, exports, name, fn_value_));              \
  } while (0)

#endif
