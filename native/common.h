// Shared by the addon's C files (trellis.c, bpf.c): a failed syscall as a JS Error with errno, code and syscall, and
// the argument checks every exported function starts with.
#ifndef TRELLIS_COMMON_H
#define TRELLIS_COMMON_H

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <node_api.h>

#include "checks.h"

// A failed syscall, reported to JS as an Error with errno, code and syscall.
typedef struct {
  int err;
  const char *syscall;
  const char *what;  // the argument the message names: a netns path, host:port or fd
} failure;

static inline int fail(failure *f, const char *syscall, const char *what) {
  f->err = errno;
  f->syscall = syscall;
  f->what = what;
  return -1;
}

static inline const char *errno_name(int err) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
  const char *name = strerrorname_np(err);
  if (name != NULL) return name;
#endif
  switch (err) {
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case EBADF: return "EBADF";
    case EACCES: return "EACCES";
    case EINVAL: return "EINVAL";
    case EMFILE: return "EMFILE";
    case ENFILE: return "ENFILE";
    case ENOTSOCK: return "ENOTSOCK";
    case ENOPROTOOPT: return "ENOPROTOOPT";
    case EAFNOSUPPORT: return "EAFNOSUPPORT";
    case EADDRINUSE: return "EADDRINUSE";
    case EADDRNOTAVAIL: return "EADDRNOTAVAIL";
    case ENOTCONN: return "ENOTCONN";
    case ECONNREFUSED: return "ECONNREFUSED";
    case ENOMEM: return "ENOMEM";
    case ENOBUFS: return "ENOBUFS";
    case EIO: return "EIO";
    case EEXIST: return "EEXIST";
    case ESRCH: return "ESRCH";
    case E2BIG: return "E2BIG";
    case EAGAIN: return "EAGAIN";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    default: return "EUNKNOWN";
  }
}

static inline napi_value throw_failure(napi_env env, const failure *f) {
  char message[PATH_MAX + 128];
  snprintf(message, sizeof message, "%s %s: %s", f->syscall, f->what, strerror(f->err));
  napi_value code, msg, error, err_no, syscall;
  NAPI_CALL(env, napi_create_string_utf8(env, errno_name(f->err), NAPI_AUTO_LENGTH, &code));
  NAPI_CALL(env, napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &msg));
  NAPI_CALL(env, napi_create_error(env, code, msg, &error));
  NAPI_CALL(env, napi_create_int32(env, f->err, &err_no));
  NAPI_CALL(env, napi_create_string_utf8(env, f->syscall, NAPI_AUTO_LENGTH, &syscall));
  NAPI_CALL(env, napi_set_named_property(env, error, "errno", err_no));
  NAPI_CALL(env, napi_set_named_property(env, error, "syscall", syscall));
  NAPI_CALL(env, napi_throw(env, error));
  return NULL;
}

static inline bool arg_string(napi_env env, napi_value value, const char *name, char *buf, size_t size) {
  napi_valuetype type;
  NAPI_CALL_BOOL(env, napi_typeof(env, value, &type));
  if (type != napi_string) {
    char message[96];
    snprintf(message, sizeof message, "%s must be a string", name);
    napi_throw_type_error(env, "EINVAL", message);
    return false;
  }
  size_t len = 0;
  NAPI_CALL_BOOL(env, napi_get_value_string_utf8(env, value, NULL, 0, &len));
  if (len == 0 || len >= size) {
    char message[96];
    snprintf(message, sizeof message, "%s must be 1 to %zu bytes long", name, size - 1);
    napi_throw_range_error(env, "EINVAL", message);
    return false;
  }
  NAPI_CALL_BOOL(env, napi_get_value_string_utf8(env, value, buf, size, &len));
  return true;
}

static inline bool arg_uint32(napi_env env, napi_value value, const char *name, uint32_t *out) {
  napi_valuetype type;
  NAPI_CALL_BOOL(env, napi_typeof(env, value, &type));
  if (type != napi_number) {
    char message[96];
    snprintf(message, sizeof message, "%s must be a number", name);
    napi_throw_type_error(env, "EINVAL", message);
    return false;
  }
  NAPI_CALL_BOOL(env, napi_get_value_uint32(env, value, out));
  return true;
}

#endif
