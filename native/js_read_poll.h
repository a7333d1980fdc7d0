// A uv_poll on the Node event loop for an addon object that reads its own
// socket on the JS thread (TcpAcceptor, DgramSocket): their start(onBatch)
// checks, starting the poll with the error a user can act on, calling the
// callback, stopping, and freeing the handle after libuv has closed it. One
// place for that lifetime, so the two cannot drift.
#pragma once

#include <napi.h>
#include <uv.h>

#include <cerrno>
#include <initializer_list>
#include <string>

#include "napi_errors.h"

namespace fakeproxy {

class JsReadPoll {
 public:
  // Polls fd for readability, calling cb with handle->data = data. On failure
  // throws (what names the socket in the message) and returns false.
  bool Start(Napi::Env env, int fd, void* data, uv_poll_cb cb, const char* what) {
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
      ThrowSys(env, EINVAL, "napi_get_uv_event_loop", "no event loop");
      return false;
    }
    poll_ = new uv_poll_t;
    int r = uv_poll_init(loop, poll_, fd);
    if (r == 0) {
      poll_->data = data;
      r = uv_poll_start(poll_, UV_READABLE, cb);
    }
    if (r != 0) {
      uv_close(reinterpret_cast<uv_handle_t*>(poll_), Free);
      poll_ = nullptr;
      ThrowSys(env, -r, "uv_poll_start", std::string("cannot poll ") + what + ": " + uv_strerror(r));
      return false;
    }
    return true;
  }

  // start(onBatch) of the wrapper `cls`: info[0] must be a function, fd open
  // (>= 0) and the poll not started; then keeps the callback and polls. On
  // false a JS exception is pending; on true the caller Ref()s itself, so JS
  // cannot collect an object that is polled.
  bool StartBatches(const Napi::CallbackInfo& info, int fd, void* data, uv_poll_cb cb, const char* cls,
                    const char* what) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsFunction()) {
      ThrowArg(env, std::string(cls) + ".start(onBatch) needs a function");
      return false;
    }
    if (fd < 0) {
      ThrowSys(env, EBADF, "start", std::string(cls) + " is closed");
      return false;
    }
    if (active()) {
      ThrowArg(env, std::string(cls) + ".start called twice");
      return false;
    }
    callback_ = Napi::Persistent(info[0].As<Napi::Function>());
    if (!Start(env, fd, data, cb, what)) {
      callback_.Reset();
      return false;
    }
    return true;
  }

  // Calls the onBatch callback (none after Stop()). The JS side catches its
  // own errors; anything else is a bug, surfaced as uncaught. False when
  // there was no callback or it threw.
  bool Deliver(Napi::Env env, Napi::Value recv, std::initializer_list<napi_value> args) {
    if (callback_.IsEmpty()) return false;
    callback_.MakeCallback(recv, args);
    if (!env.IsExceptionPending()) return true;
    Napi::Error e = env.GetAndClearPendingException();
    napi_fatal_exception(env, e.Value());
    return false;
  }

  bool has_callback() const { return !callback_.IsEmpty(); }

  // Stops polling and drops the callback; false when it was not polling. No
  // callback sees data after this.
  bool Stop() {
    callback_.Reset();
    if (poll_ == nullptr) return false;
    uv_poll_stop(poll_);
    poll_->data = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(poll_), Free);
    poll_ = nullptr;
    return true;
  }

  bool active() const { return poll_ != nullptr; }

 private:
  static void Free(uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); }
  uv_poll_t* poll_ = nullptr;
  Napi::FunctionReference callback_;
};

}  // namespace fakeproxy
