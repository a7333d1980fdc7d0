#pragma once

#include <napi.h>

namespace fakeproxy {

// Registers the `TcpAcceptor` class (the Listener's socket, accepted in batches: accept_addon.cc) on exports.
void InitAccept(Napi::Env env, Napi::Object exports);

}  // namespace fakeproxy
