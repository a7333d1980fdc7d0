// N-API glue for the native TCP relay (native/relay.h): registers the `Relay`
// class on the module's exports. Called once from the module init in addon.cc.
#pragma once

#include <napi.h>

void InitRelay(Napi::Env env, Napi::Object exports);
