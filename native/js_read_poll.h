// A uv_poll on the Node event loop for an addon object that reads its own
// socket on the JS thread (TcpAcceptor, DgramSocket): starting it with the
// error a user can act on, stopping it, and freeing the handle after libuv
// has closed it. One place for that lifetime, so the two cannot drift.
#pragma once

#include <napi.h>
#include <uv.h>

#include <cerrno>
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

  // Stops polling; false when it was not polling. No callback sees data after this.
  bool Stop() {
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
};

}  // namespace fakeproxy
