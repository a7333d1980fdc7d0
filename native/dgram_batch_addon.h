#pragma once

#include <napi.h>

namespace fakeproxy {

// Registers the `DgramSocket` class (batched UDP socket, dgram_batch_addon.cc) on exports.
void InitDgramBatch(Napi::Env env, Napi::Object exports);

}  // namespace fakeproxy
