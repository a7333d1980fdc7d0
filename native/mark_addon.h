// N-API glue for SO_MARK on the daemon's own sockets (global mode, DESIGN.md
// "Routing modes"): registers markedTcpSocket, setSocketMark and socketMark.
#pragma once

#include <napi.h>

void InitMark(Napi::Env env, Napi::Object exports);
