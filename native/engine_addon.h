// N-API glue for the packet engine (native/engine.h): registers the `Engine`
// class on the module's exports. Called once from the module init in addon.cc.
#pragma once

#include <napi.h>

void InitEngine(Napi::Env env, Napi::Object exports);
