// N-API glue for the native UDP relay (native/udp_relay.h): registers the
// `UdpRelay` class on the module's exports. Called once from addon.cc.
#pragma once

#include <napi.h>

void InitUdpRelay(Napi::Env env, Napi::Object exports);
