// One place that builds JS errors from native failures (better-sqlite3 style):
// Node-like `code` (errno name), `errno`, `syscall`, and a message that names
// the fix. Callers return right after throwing; nothing throws twice.
#pragma once

#include <errno.h>
#include <napi.h>

#include <string>

namespace fakeproxy {

inline const char* ErrnoName(int err) {
  switch (err) {
    case EPERM:
      return "EPERM";
    case EACCES:
      return "EACCES";
    case ENOENT:
      return "ENOENT";
    case ENODEV:
      return "ENODEV";
    case ENXIO:
      return "ENXIO";
    case EBUSY:
      return "EBUSY";
    case EEXIST:
      return "EEXIST";
    case EINVAL:
      return "EINVAL";
    case EMFILE:
      return "EMFILE";
    case ENFILE:
      return "ENFILE";
    case ENOMEM:
      return "ENOMEM";
    case ENOBUFS:
      return "ENOBUFS";
    case EAGAIN:
      return "EAGAIN";
    case EBADF:
      return "EBADF";
    case EIO:
      return "EIO";
    case EADDRINUSE:
      return "EADDRINUSE";
    case EADDRNOTAVAIL:
      return "EADDRNOTAVAIL";
    case EMSGSIZE:
      return "EMSGSIZE";
    case ENOTSOCK:
      return "ENOTSOCK";
    case EPROTOTYPE:
      return "EPROTOTYPE";
    case ESHUTDOWN:
      return "ESHUTDOWN";
    case ECONNREFUSED:
      return "ECONNREFUSED";
    case ENETUNREACH:
      return "ENETUNREACH";
    case EHOSTUNREACH:
      return "EHOSTUNREACH";
    case ETIMEDOUT:
      return "ETIMEDOUT";
    case EAFNOSUPPORT:
      return "EAFNOSUPPORT";
    default:
      return "EFAKEPROXY";
  }
}

inline void ThrowSys(Napi::Env env, int err, const std::string& syscall, const std::string& message) {
  if (env.IsExceptionPending()) return;
  Napi::Error e = Napi::Error::New(env, std::string(ErrnoName(err)) + ": " + message);
  e.Set("code", Napi::String::New(env, ErrnoName(err)));
  e.Set("errno", Napi::Number::New(env, -err));
  e.Set("syscall", Napi::String::New(env, syscall));
  e.ThrowAsJavaScriptException();
}

inline void ThrowArg(Napi::Env env, const std::string& message) {
  if (env.IsExceptionPending()) return;
  Napi::TypeError e = Napi::TypeError::New(env, message);
  e.Set("code", Napi::String::New(env, "ERR_INVALID_ARG"));
  e.ThrowAsJavaScriptException();
}

}  // namespace fakeproxy
